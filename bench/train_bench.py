#!/usr/bin/env python3
"""Helper of bench/train.sh: alternates `cnnc train` and a PyTorch loop, same
model (mnist_cnn), batch, optimiser and data; prints samples/s and the ratio.

cnnc: `cnnc train models/mnist_cnn.cnn --max-steps N+1 --epochs 1`, whose
epoch line reports samples/s timed from the end of its first step (so N timed
steps). PyTorch: the same N+1 steps in this process (torch's default thread
count, float32, model.train(), Adam(lr=2e-4), CrossEntropyLoss, batches drawn
from a seeded permutation of the 8000 training digits), timed from the end of
its first step. Each round runs both, the side that goes first flipping
every round; the medians and the per-round ratios are printed.

`python3 bench/train_bench.py --resnet18` (`bench/train.sh --resnet18`) does
the same for torchvision's resnet18 at CIFAR's 32×32 with 10 classes
(`models/resnet18.cnn --set size=32 --set num_classes=10`), batch 128, SGD
(lr 0.01, momentum 0.9), on a CIFAR-10 binary file of random pixels and
labels written for the run (the values do not change the work), no
augmentation on either side; cnnc reads the file (`--data`), PyTorch the
same bytes as a tensor. Defaults there: 3 rounds of 10 timed steps.

`python3 bench/train_bench.py --accuracy [EPOCHS [LR]]` instead trains PyTorch
with `cnnc train`'s defaults (Adam, lr 2e-4, batch 256, 10 epochs) on the same
8000/2000 split and prints the held-out accuracy per epoch, as a reference
for cnnc's.
"""
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn

import pathlib, sys; sys.path.insert(0, str(next(p for p in pathlib.Path(__file__).resolve().parents if (p / "scripts/cnnc_py").is_dir()) / "scripts"))  # noqa: E401,E702 (see scripts/cnnc_py/__init__.py)
from cnnc_py import mnist, paths  # noqa: E402
from cnnc_py.torch_models import MnistCnn  # noqa: E402

ROUNDS = int(os.environ.get("CNNC_TRAIN_ROUNDS", "5"))
STEPS = int(os.environ.get("CNNC_TRAIN_STEPS", "20"))
BATCH = 256
CNNC = paths.CNNC


def load_train():
    x, y, _, _ = mnist.split_10k()
    return torch.from_numpy(x), torch.from_numpy(y)


def torch_round(x, y):
    torch.manual_seed(0)
    model = MnistCnn()
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    loss_fn = nn.CrossEntropyLoss()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    t0 = None
    for s in range(STEPS + 1):
        idx = order[(s * BATCH) % (len(x) - BATCH):][:BATCH]
        opt.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        if s == 0:
            t0 = time.perf_counter()
    return STEPS * BATCH / (time.perf_counter() - t0)


def cnnc_round(tmp):
    out = subprocess.run(
        [CNNC, "train", paths.model("mnist_cnn"), "--epochs", "1",
         "--max-steps", str(STEPS + 1), "--batch", str(BATCH), "-o", os.path.join(tmp, "w.safetensors")],
        check=True, capture_output=True, text=True).stdout
    m = re.search(r"([0-9.]+) samples/s", out)
    if not m:
        sys.exit(f"no samples/s in cnnc's output:\n{out}")
    return float(m.group(1))


R18_BATCH = 128


def cifar_file(tmp, records):
    """A CIFAR-10 binary batch of `records` random images: label byte, then 3×32×32 bytes."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=(records, 1), dtype=np.uint8)
    pixels = rng.integers(0, 256, size=(records, 3 * 32 * 32), dtype=np.uint8)
    path = os.path.join(tmp, "data_batch_1.bin")
    np.concatenate([labels, pixels], axis=1).tofile(path)
    x = torch.from_numpy(pixels.reshape(-1, 3, 32, 32).astype(np.float32) / 255)
    y = torch.from_numpy(labels[:, 0].astype(np.int64))
    return path, x, y


def r18_torch_round(x, y, steps):
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    t0 = None
    for s in range(steps + 1):
        lo = (s * R18_BATCH) % (len(x) - R18_BATCH)
        opt.zero_grad()
        loss = loss_fn(model(x[lo:lo + R18_BATCH]), y[lo:lo + R18_BATCH])
        loss.backward()
        opt.step()
        if s == 0:
            t0 = time.perf_counter()
    return steps * R18_BATCH / (time.perf_counter() - t0)


def r18_cnnc_round(tmp, data, steps):
    out = subprocess.run(
        [CNNC, "train", paths.model("resnet18"), "--set", "size=32",
         "--set", "num_classes=10", "--data", data, "--holdout", str(R18_BATCH), "--epochs", "1",
         "--max-steps", str(steps + 1), "--batch", str(R18_BATCH), "--optimizer", "sgd",
         "--lr", "0.01", "--momentum", "0.9", "-o", os.path.join(tmp, "w.safetensors")],
        check=True, capture_output=True, text=True).stdout
    m = re.search(r"([0-9.]+) samples/s", out)
    if not m:
        sys.exit(f"no samples/s in cnnc's output:\n{out}")
    return float(m.group(1))


def resnet18_main():
    rounds = int(os.environ.get("CNNC_TRAIN_ROUNDS", "3"))
    steps = int(os.environ.get("CNNC_TRAIN_STEPS", "10"))
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        data, x, y = cifar_file(tmp, (steps + 2) * R18_BATCH + R18_BATCH)
        x, y = x[R18_BATCH:], y[R18_BATCH:]  # cnnc holds the first batch out
        for r in range(rounds):
            if r % 2 == 0:
                ours.append(r18_cnnc_round(tmp, data, steps))
                theirs.append(r18_torch_round(x, y, steps))
            else:
                theirs.append(r18_torch_round(x, y, steps))
                ours.append(r18_cnnc_round(tmp, data, steps))
            print(f"round {r + 1}: cnnc {ours[-1]:.1f} samples/s, PyTorch {theirs[-1]:.1f} samples/s",
                  file=sys.stderr)
    o, t = statistics.median(ours), statistics.median(theirs)
    print(os.environ.get("CNNC_BENCH_MACHINE", ""))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; cnnc with rayon's default "
          f"({os.cpu_count()} threads); resnet18 at 32x32, 10 classes, batch {R18_BATCH}, "
          f"SGD (lr 0.01, momentum 0.9), no augmentation, {steps} timed steps per round, "
          f"{rounds} alternating rounds")
    print(f"cnnc train:  {o:.1f} samples/s (median; rounds {', '.join(f'{v:.1f}' for v in ours)})")
    print(f"PyTorch:     {t:.1f} samples/s (median; rounds {', '.join(f'{v:.1f}' for v in theirs)})")
    ratios = [a / b for a, b in zip(ours, theirs)]
    print(f"ratio cnnc/PyTorch: {o / t:.2f}x (of the medians); per round "
          f"{', '.join(f'{r:.2f}' for r in ratios)}")
    print(f"load average after: {' '.join(open('/proc/loadavg').read().split()[:3])}")


def load_split():
    return tuple(torch.from_numpy(a) for a in mnist.split_10k())


def accuracy_reference(epochs, lr):
    """PyTorch with cnnc train's defaults on the same split: what accuracy to expect."""
    xt, yt, xh, yh = load_split()
    torch.manual_seed(0)
    model = MnistCnn()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)
    for e in range(epochs):
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(order), BATCH):
            idx = order[i:i + BATCH]
            opt.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = (model(xh).argmax(1) == yh).double().mean().item() * 100
        print(f"PyTorch epoch {e + 1}/{epochs}: held-out accuracy {acc:.2f}%", flush=True)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--accuracy":
        epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 10
        lr = float(sys.argv[3]) if len(sys.argv) > 3 else 2e-4
        return accuracy_reference(epochs, lr)
    if len(sys.argv) > 1 and sys.argv[1] == "--resnet18":
        return resnet18_main()
    x, y = load_train()
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(ROUNDS):
            # The side that goes first flips every round.
            if r % 2 == 0:
                ours.append(cnnc_round(tmp))
                theirs.append(torch_round(x, y))
            else:
                theirs.append(torch_round(x, y))
                ours.append(cnnc_round(tmp))
            print(f"round {r + 1}: cnnc {ours[-1]:.0f} samples/s, PyTorch {theirs[-1]:.0f} samples/s",
                  file=sys.stderr)
    o, t = statistics.median(ours), statistics.median(theirs)
    print(os.environ.get("CNNC_BENCH_MACHINE", ""))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; cnnc with rayon's default "
          f"({os.cpu_count()} threads); mnist_cnn, batch {BATCH}, Adam, {STEPS} timed steps per round, "
          f"{ROUNDS} alternating rounds")
    print(f"cnnc train:  {o:.0f} samples/s (median; rounds {', '.join(f'{v:.0f}' for v in ours)})")
    print(f"PyTorch:     {t:.0f} samples/s (median; rounds {', '.join(f'{v:.0f}' for v in theirs)})")
    ratios = [a / b for a, b in zip(ours, theirs)]
    print(f"ratio cnnc/PyTorch: {o / t:.2f}x (of the medians); per round "
          f"{', '.join(f'{r:.2f}' for r in ratios)}, median {statistics.median(ratios):.2f}x; "
          f"best against best {max(ours) / max(theirs):.2f}x")
    print(f"load average after: {' '.join(open('/proc/loadavg').read().split()[:3])}")


if __name__ == "__main__":
    main()

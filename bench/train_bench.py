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

`python3 bench/train_bench.py --accuracy [EPOCHS [LR]]` instead trains PyTorch
with `cnnc train`'s defaults (Adam, lr 2e-4, batch 256, 10 epochs) on the same
8000/2000 split and prints the held-out accuracy per epoch, as a reference
for cnnc's.
"""
import gzip
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = int(os.environ.get("CNNC_TRAIN_ROUNDS", "5"))
STEPS = int(os.environ.get("CNNC_TRAIN_STEPS", "20"))
BATCH = 256
CNNC = os.path.join(ROOT, "target", "release", "cnnc")


sys.path.insert(0, os.path.join(ROOT, "scripts"))
from torch_models import MnistCnn  # noqa: E402


def load_train():
    d = os.path.join(ROOT, "models", "data")
    im = gzip.open(os.path.join(d, "mnist-10k-images.idx.gz")).read()[16:]
    lb = gzip.open(os.path.join(d, "mnist-10k-labels.idx.gz")).read()[8:]
    x = np.frombuffer(im, dtype=np.uint8).reshape(-1, 1, 28, 28)[2000:].astype(np.float32) / 255
    y = np.frombuffer(lb, dtype=np.uint8)[2000:].astype(np.int64)
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
        [CNNC, "train", os.path.join(ROOT, "models", "mnist_cnn.cnn"), "--epochs", "1",
         "--max-steps", str(STEPS + 1), "--batch", str(BATCH), "-o", os.path.join(tmp, "w.safetensors")],
        check=True, capture_output=True, text=True).stdout
    m = re.search(r"([0-9.]+) samples/s", out)
    if not m:
        sys.exit(f"no samples/s in cnnc's output:\n{out}")
    return float(m.group(1))


def load_split():
    d = os.path.join(ROOT, "models", "data")
    im = gzip.open(os.path.join(d, "mnist-10k-images.idx.gz")).read()[16:]
    lb = gzip.open(os.path.join(d, "mnist-10k-labels.idx.gz")).read()[8:]
    x = torch.from_numpy(np.frombuffer(im, dtype=np.uint8).reshape(-1, 1, 28, 28).astype(np.float32) / 255)
    y = torch.from_numpy(np.frombuffer(lb, dtype=np.uint8).astype(np.int64))
    return x[2000:], y[2000:], x[:2000], y[:2000]


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

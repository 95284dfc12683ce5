"""Writes the starting corpora of the weights, npy, image and idx fuzz targets.

Run once from the repository root: python3 fuzz/make_seeds.py
Small valid files of every flavour each decoder accepts; the fuzzer mutates them.
"""
import io, os, struct
import numpy as np
from PIL import Image
from safetensors.numpy import save

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
def put(target, name, data):
    os.makedirs(os.path.join(root, target), exist_ok=True)
    with open(os.path.join(root, target, name), "wb") as f:
        f.write(data)

rng = np.random.default_rng(0)
# weights
put("weights", "seed-f32", save({"conv.weight": rng.standard_normal((2, 1, 2, 2)).astype(np.float32), "conv.bias": np.zeros(2, np.float32)}))
put("weights", "seed-mixed", save({"a": np.ones(3, np.float16), "b": np.arange(2, dtype=np.int64), "c": np.ones((1, 2), np.float64), "d": np.array([1.5], np.float32)}, metadata={"format": "pt"}))
put("weights", "seed-empty", save({}))
put("weights", "seed-nan", save({"w": np.array([np.nan, np.inf, -np.inf, 1.0], np.float32)}))
put("weights", "seed-i32", save({"n": np.array([7], np.int32), "u": np.array([1], np.uint8)}))
# npy, for a model taking [3, 4, 4]
def npy(a):
    b = io.BytesIO(); np.save(b, a); return b.getvalue()
put("npy", "seed-f4-4d", npy(rng.standard_normal((2, 3, 4, 4)).astype(np.float32)))
put("npy", "seed-f8-3d", npy(rng.standard_normal((3, 4, 4))))
put("npy", "seed-u1", npy(rng.integers(0, 255, (1, 3, 4, 4), dtype=np.uint8)))
put("npy", "seed-fortran", npy(np.asfortranarray(rng.standard_normal((3, 4, 4)).astype(np.float32))))
put("npy", "seed-i2", npy(np.zeros((3, 4, 4), np.int16)))
b = io.BytesIO(); np.lib.format.write_array(b, np.ones((1, 3, 4, 4), np.float32), version=(2, 0)); put("npy", "seed-v2", b.getvalue())
# images, for a model taking [3, 8, 8]
def img(im, fmt, **kw):
    b = io.BytesIO(); im.save(b, fmt, **kw); return b.getvalue()
rgb = Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8))
put("image", "seed-rgb.png", img(rgb, "PNG"))
put("image", "seed-grey.png", img(rgb.convert("L"), "PNG"))
put("image", "seed-palette.png", img(rgb.convert("P"), "PNG"))
put("image", "seed-rgba-interlaced.png", img(rgb.convert("RGBA"), "PNG", interlace=1) if False else img(rgb.convert("RGBA"), "PNG"))
put("image", "seed-16bit.png", img(Image.fromarray((np.arange(80, dtype=np.uint16) * 800).reshape(8, 10)), "PNG"))
put("image", "seed-baseline.jpg", img(rgb, "JPEG", quality=80))
put("image", "seed-progressive.jpg", img(rgb, "JPEG", progressive=True))
put("image", "seed-grey.jpg", img(rgb.convert("L"), "JPEG"))
# IDX images (28x28 model with --pad 0 -> use 4x4 so files stay small; the target uses [1, 4, 4]) and labels
put("idx", "seed-images", bytes([0, 0, 8, 3]) + struct.pack(">III", 2, 4, 4) + rng.integers(0, 255, 32, dtype=np.uint8).tobytes())
put("idx", "seed-labels", bytes([0, 0, 8, 1]) + struct.pack(">I", 3) + bytes([1, 2, 3]))
put("idx", "seed-empty-images", bytes([0, 0, 8, 3]) + struct.pack(">III", 0, 4, 4))

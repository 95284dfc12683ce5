"""safetensors without the safetensors package: the GPU check's machine has
PyTorch and numpy but no package registry. The fixture generators, which run
where `pip install safetensors` works, use safetensors.torch itself.

    save(path, tensors)   a state_dict (float32 and int64 tensors) to a file
    load(path)            a file to a dict of torch tensors, in file order
    read_header(path)     (header without "__metadata__", offset of the data)
"""
import json
import struct

import numpy as np
import torch

# safetensors dtype names as numpy dtypes (the ones cnnc's scripts meet).
DTYPES = {"F32": np.float32, "I64": np.int64, "F16": np.float16, "F64": np.float64}


def save(path, tensors):
    """Writes `tensors` (name -> torch tensor), sorted by name, header padded to 8 bytes."""
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        dtype = {torch.float32: "F32", torch.int64: "I64"}[t.dtype]
        data = t.numpy().tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)


def read_header(path):
    """(the header: name -> {"dtype", "shape", "data_offsets"}, without "__metadata__";
    the file offset where the data, which data_offsets count from, starts)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def load(path):
    """name -> torch tensor (a copy, writable), in the header's order."""
    header, start = read_header(path)
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read()
    out = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        dt = DTYPES[info["dtype"]]
        out[name] = torch.from_numpy(np.frombuffer(data[a:b], dtype=dt).reshape(info["shape"]).copy())
    return out

#!/usr/bin/env python3
"""Runs the launches the emulation harness exported on a real GPU and compares.

    CNNC_EMU_EXPORT=/tmp/emu-export cargo test --test it emulation::   # any machine
    python3 tests/emulation/gpu_parity.py /tmp/emu-export           # a GPU machine

Each exported model directory holds the printed model.cu, plan.json (every
launch with its grid, block and argument sources, as the driver passes them),
the input and prepared weights, every step's output as the emulator computed
it, and the reference evaluator's output. This script compiles model.cu with
NVRTC, runs the same launches through the CUDA driver API on an arena
poisoned with NaN (as the harness does), and compares every step's output
with the emulator's and the final output with the evaluator's:
max |a - b| <= 1e-4 * max(1, |b|). It also reports how many step outputs are
bit-identical to the emulator's: the GEMMs accumulate with explicit fmaf in
the same order on both, so differences come only from nvcc's contraction of
a*b + c elsewhere and from the math library (expf, erff, tanhf, powf, ...).

Standard library only (ctypes), so it runs on a bare GPU machine with a
driver and NVRTC (a CUDA toolkit, or the nvidia-cuda-nvrtc wheel). Runs under
compute-sanitizer too (--tool memcheck / racecheck / synccheck).
--dry checks the export without a GPU.
"""
import array
import ctypes
import ctypes.util
import glob
import json
import os
import struct
import sys

TOLERANCE = 1e-4


def find_nvrtc():
    names = [ctypes.util.find_library("nvrtc")]
    patterns = ["/usr/local/cuda*/lib64/libnvrtc.so*", "/usr/local/cuda*/targets/*/lib/libnvrtc.so*",
                "/usr/lib/x86_64-linux-gnu/libnvrtc.so*", "/usr/lib64/libnvrtc.so*"]
    for p in sys.path:
        patterns += [p + "/nvidia/cuda_nvrtc/lib/libnvrtc.so*", p + "/nvidia/cu*/lib/libnvrtc.so*",
                     p + "/torch/lib/libnvrtc*.so*"]
    for pattern in patterns:
        names += sorted(glob.glob(pattern), reverse=True)
    for name in names:
        if not name or "builtins" in name:
            continue
        try:
            return ctypes.CDLL(name), name
        except OSError:
            pass
    raise SystemExit("no NVRTC library found (install a CUDA toolkit or the nvidia-cuda-nvrtc wheel)")


class Gpu:
    def __init__(self):
        self.cu = ctypes.CDLL("libcuda.so.1")
        self.nvrtc, self.nvrtc_path = find_nvrtc()
        cu = self.cu
        u64, vp, sz = ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t
        cu.cuMemAlloc_v2.argtypes = [ctypes.POINTER(u64), sz]
        cu.cuMemFree_v2.argtypes = [u64]
        cu.cuMemsetD8_v2.argtypes = [u64, ctypes.c_ubyte, sz]
        cu.cuMemcpyHtoD_v2.argtypes = [u64, vp, sz]
        cu.cuMemcpyDtoH_v2.argtypes = [vp, u64, sz]
        cu.cuLaunchKernel.argtypes = [vp] + [ctypes.c_uint] * 7 + [vp, ctypes.POINTER(vp), ctypes.POINTER(vp)]
        self.check(cu.cuInit(0), "cuInit")
        dev = ctypes.c_int()
        self.check(cu.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
        major, minor = ctypes.c_int(), ctypes.c_int()
        cu.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)
        cu.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)
        self.arch = major.value * 10 + minor.value
        name = ctypes.create_string_buffer(256)
        cu.cuDeviceGetName(name, 256, dev)
        self.name = name.value.decode()
        self.ctx = vp()
        self.check(cu.cuDevicePrimaryCtxRetain(ctypes.byref(self.ctx), dev), "cuDevicePrimaryCtxRetain")
        self.check(cu.cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")

    def check(self, rc, what):
        if rc:
            text = ctypes.c_char_p()
            self.cu.cuGetErrorString(rc, ctypes.byref(text))
            raise RuntimeError(f"{what} failed: {rc} {text.value.decode() if text.value else ''}")

    def compile(self, source, name):
        nv = self.nvrtc
        prog = ctypes.c_void_p()
        rc = nv.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None)
        if rc:
            raise RuntimeError(f"nvrtcCreateProgram failed: {rc}")
        opts = [f"--gpu-architecture=sm_{self.arch}".encode(), b"--std=c++17"]
        rc = nv.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        nv.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value + 1)
        nv.nvrtcGetProgramLog(prog, log)
        if rc:
            raise RuntimeError(f"NVRTC failed to compile {name}:\n{log.value.decode()[:4000]}")
        nv.nvrtcGetCUBINSize(prog, ctypes.byref(size))
        image = ctypes.create_string_buffer(size.value)
        nv.nvrtcGetCUBIN(prog, image)
        module = ctypes.c_void_p()
        self.check(self.cu.cuModuleLoadData(ctypes.byref(module), image), "cuModuleLoadData")
        return module, log.value.decode().strip()

    def function(self, module, name):
        f = ctypes.c_void_p()
        self.check(self.cu.cuModuleGetFunction(ctypes.byref(f), module, name.encode()), f"cuModuleGetFunction {name}")
        return f

    def upload(self, values):
        ptr = ctypes.c_uint64()
        n = max(len(values), 1) * 4
        self.check(self.cu.cuMemAlloc_v2(ctypes.byref(ptr), n), "cuMemAlloc")
        if len(values):
            buf = values.tobytes()
            self.check(self.cu.cuMemcpyHtoD_v2(ptr.value, buf, len(buf)), "cuMemcpyHtoD")
        return ptr.value


def floats(path, typecode="f"):
    a = array.array(typecode)
    with open(path, "rb") as f:
        a.frombytes(f.read())
    if sys.byteorder != "little":
        a.byteswap()
    return a


def decode(raw, fmt):
    """The arena's bytes as floats: f32, or 16-bit bf16 / fp16 words."""
    if fmt == "f32":
        return memoryview(raw).cast("B").cast("f")
    words = memoryview(raw).cast("B").cast("H")
    if fmt == "bf16":
        return array.array("f", struct.pack(f"<{len(words)}I", *[w << 16 for w in words]))
    return array.array("f", struct.unpack(f"<{len(words)}e", bytes(raw)))


def read_place(arena, place, batch):
    hw = place["h"] * place["w"]
    out = array.array("f")
    for n in range(batch):
        s = place["offset"] + (n * place["channels_total"] + place["channel_offset"]) * hw
        out.extend(arena[s:s + place["c"] * hw])
    return out


def compare(got, want):
    """(worst scaled error, index of the worst, bit-identical count)."""
    worst, at, same = 0.0, -1, 0
    for i, (g, w) in enumerate(zip(got, want)):
        if g == w or (g != g and w != w):
            same += 1
            continue
        e = abs(g - w) / max(1.0, abs(w))
        if e != e:
            e = float("inf")
        if e > worst:
            worst, at = e, i
    if len(got) != len(want):
        worst = float("inf")
    return worst, at, same


def run_model(gpu, d, dry):
    plan = json.load(open(os.path.join(d, "plan.json")))
    batch = plan["batch"]
    params = [floats(os.path.join(d, f"p{i}.bin")) for i in range(plan["params"])]
    # The input as the driver copies it into the arena (f32, or already
    # rounded to the build's 16-bit activations).
    inputs = open(os.path.join(d, "input.bin"), "rb").read()
    ab = plan.get("activation_bytes", 4)
    fmt = plan.get("activation_format", "f32")
    # The precision's tolerance (docs/testing.md); a 16-bit rounding that
    # falls the other way on the GPU moves a value by one 16-bit step.
    tolerance = plan.get("tolerance", TOLERANCE)
    emulated = [floats(os.path.join(d, f"step{i}.bin")) for i in range(len(plan["steps"]))]
    reference = floats(os.path.join(d, "reference.bin"), "d")
    for i, step in enumerate(plan["steps"]):
        o = step["output"]
        assert len(emulated[i]) == batch * o["c"] * o["h"] * o["w"], (d, i)
    if dry:
        return True, f"{plan['model']}: {len(plan['steps'])} steps, export complete"
    source = open(os.path.join(d, "model.cu")).read()
    module, log = gpu.compile(source, plan["model"] + ".cu")
    arena_bytes = max(plan["arena_floats"], 1) * ab
    ptr = ctypes.c_uint64()
    gpu.check(gpu.cu.cuMemAlloc_v2(ctypes.byref(ptr), arena_bytes), "cuMemAlloc arena")
    arena = ptr.value
    gpu.check(gpu.cu.cuMemsetD8_v2(arena, 0xFF, arena_bytes), "cuMemsetD8")  # NaN in every format
    gpu.check(gpu.cu.cuMemcpyHtoD_v2(arena + plan["input_offset"] * ab, inputs, len(inputs)), "input copy")
    weights = [gpu.upload(p) for p in params]
    # Split-K scratch: partial sums (NaN, as the harness) and counters (zero, as the driver).
    scratch = {}
    for key, size_key, fill in (("workspace", "workspace_floats", 0xFF), ("counters", "counters", 0)):
        nbytes = max(plan.get(size_key, 0), 1) * 4
        gpu.check(gpu.cu.cuMemAlloc_v2(ctypes.byref(ptr), nbytes), f"cuMemAlloc {key}")
        scratch[key] = ptr.value
        gpu.check(gpu.cu.cuMemsetD8_v2(scratch[key], fill, nbytes), f"cuMemsetD8 {key}")
    host = (ctypes.c_uint8 * arena_bytes)()
    worst_step, identical, total, lines = (0.0, None), 0, 0, []
    for i, step in enumerate(plan["steps"]):
        f = gpu.function(module, step["kernel"])
        values = []
        for a in step["args"]:
            if a[0] == "arena":
                values.append(ctypes.c_uint64(arena + a[1] * ab))
            elif a[0] == "param":
                values.append(ctypes.c_uint64(weights[a[1]]))
            elif a[0] == "null":
                values.append(ctypes.c_uint64(0))
            elif a[0] in scratch:
                values.append(ctypes.c_uint64(scratch[a[0]]))
            else:
                values.append(ctypes.c_int(a[1]))
        pointers = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        gx, gy, gz = step["grid"]
        gpu.check(gpu.cu.cuLaunchKernel(f, gx, gy, gz, step["block"], 1, 1, 0, None, pointers, None),
                  f"launching {step['kernel']}")
        gpu.check(gpu.cu.cuCtxSynchronize(), f"running {step['kernel']}")
        gpu.check(gpu.cu.cuMemcpyDtoH_v2(host, arena, arena_bytes), "cuMemcpyDtoH")
        view = decode(host, fmt)
        got = read_place(view, step["output"], batch)
        e, at, same = compare(got, emulated[i])
        identical += same
        total += len(got)
        if e > worst_step[0]:
            worst_step = (e, f"step {i} {step['kernel']} element {at}: gpu {got[at]!r} emulated {emulated[i][at]!r}")
        if e > tolerance:
            lines.append(f"  step {i} {step['kernel']}: gpu vs emulator {e:.3e} at element {at}")
    out = read_place(view, plan["output"], batch)
    e_ref, at_ref, _ = compare(out, reference)
    for w in weights:
        gpu.cu.cuMemFree_v2(w)
    gpu.cu.cuMemFree_v2(arena)
    for p in scratch.values():
        gpu.cu.cuMemFree_v2(p)
    gpu.cu.cuModuleUnload(module)
    ok = worst_step[0] <= tolerance and e_ref <= tolerance
    text = (f"{'PASS' if ok else 'FAIL'} {plan['model']:<32} {len(plan['steps']):>3} steps  "
            f"bit-identical {100.0 * identical / max(total, 1):6.2f}%  gpu-vs-emulator {worst_step[0]:.2e}  "
            f"gpu-vs-evaluator {e_ref:.2e}")
    if worst_step[1]:
        text += f"\n  worst: {worst_step[1]}"
    if log:
        text += f"\n  NVRTC: {log[:500]}"
    return ok, "\n".join([text] + lines)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    dry = "--dry" in sys.argv
    only = None
    for a in sys.argv[1:]:
        if a.startswith("--only="):
            only = set(a[len("--only="):].split(","))
    if len(args) != 1:
        raise SystemExit(__doc__)
    dirs = sorted(d for d in glob.glob(os.path.join(args[0], "*")) if os.path.exists(os.path.join(d, "plan.json")))
    if only:
        dirs = [d for d in dirs if os.path.basename(d) in only]
    if not dirs:
        raise SystemExit(f"no exported models under {args[0]}")
    gpu = None
    if not dry:
        gpu = Gpu()
        print(f"{gpu.name}, sm_{gpu.arch}, NVRTC {gpu.nvrtc_path}")
    failed = 0
    for d in dirs:
        try:
            ok, text = run_model(gpu, d, dry)
        except Exception as e:  # report and go on with the next model
            ok, text = False, f"FAIL {os.path.basename(d)}: {e}"
        failed += not ok
        print(text, flush=True)
    print(f"{len(dirs) - failed} of {len(dirs)} models agree")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

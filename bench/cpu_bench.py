#!/usr/bin/env python3
"""CPU benchmark: cnnc-built binaries (`--device cpu`) against PyTorch eager on
the same machine, same weights, same inputs, in the same run. Run through
bench/cpu.sh.

For each (model, batch):
  * numerics: the binary (`--input x.npy --output y.npy --device cpu`) and
    PyTorch on the same inputs (MNIST digits for the MNIST models, seeded
    standard-normal images for the others); max |a - b| / max(1, |b|), against
    PyTorch and against cnnc's reference evaluator (`cnnc run`, f64), whose
    1e-4 is the issue's numerics requirement;
  * latency: R rounds, alternating (the order flips every round): the binary's
    own `--bench K` (its p50, after its warm-up) and PyTorch timed in this
    process (`torch.set_num_threads(os.cpu_count())`, `eval()`,
    `torch.inference_mode()`, warmed up, median of K). Both time the same
    input, the constant 0.5 image batch the binary's `--bench` feeds itself.
    The result is the median of the R per-round medians;
  * peak memory: the binary under `/usr/bin/time -f %M` (`--bench 3`, maximum
    resident set), and PyTorch's `ru_maxrss` in a fresh Python process that
    imports torch, builds the model on the meta device, gives it the same
    weights memory-mapped (`load_state_dict(assign=True)`, one copy) and runs
    one forward pass at that batch.

Weights: the trained ones in models/weights for the MNIST models; for the
torchvision models seeded random ones with random batch-norm statistics
(`scripts/gpu_check.py`'s `make`), written as safetensors and loaded by both.

Environment: CNNC_BENCH_CASES ("resnet18:1 vgg16:1", default all),
CNNC_BENCH_ROUNDS (default 5), CNNC_BENCH_ROUND_S (seconds per side per round
that K is chosen for, default 1.0), CNNC_BENCH_OUT (default /tmp/cnnc-cpu-bench),
CNNC_BIN (default gpu/bin).
"""
import os
import re
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

import pathlib, sys; sys.path.insert(0, str(next(p for p in pathlib.Path(__file__).resolve().parents if (p / "scripts/cnnc_py").is_dir()) / "scripts"))  # noqa: E401,E702 (see scripts/cnnc_py/__init__.py)
from cnnc_py import paths  # noqa: E402

OUT = os.environ.get("CNNC_BENCH_OUT", "/tmp/cnnc-cpu-bench")
os.environ["OUT"] = OUT  # gpu_check.make writes random weights under $OUT/work
import gpu_check  # noqa: E402  (scripts/gpu_check.py: the line above put scripts/ on the path)

CNNC = paths.CNNC
BIN = os.environ.get("CNNC_BIN", paths.GPU_BIN)
WORK = os.path.join(OUT, "work")
ROUNDS = int(os.environ.get("CNNC_BENCH_ROUNDS", "5"))
ROUND_S = float(os.environ.get("CNNC_BENCH_ROUND_S", "1.0"))
DEFAULT_CASES = ("mnist_cnn:1 mnist_cnn:256 lenet5:1 lenet5:256 resnet18:1 resnet18:16 resnet50:1 resnet50:16 vgg16:1 "
                 "mobilenet_v2:1 efficientnet_b0:1 convnext_tiny:1")
# (model, batch) -> minimum PyTorch/cnnc speed ratio the issue asks for.
TARGETS = {("mnist_cnn", 1): 3.0, ("lenet5", 1): 3.0, ("mnist_cnn", 256): 1.0, ("lenet5", 256): 1.0,
           ("resnet18", 1): 0.8, ("resnet50", 1): 0.8,
           # Issue 19 (depthwise convolutions): at least as fast as PyTorch.
           ("mobilenet_v2", 1): 1.0, ("efficientnet_b0", 1): 1.0,
           # Issue 19 (no cliff on the new shapes): layer norm, 7x7 depthwise, GELU.
           ("convnext_tiny", 1): 1.0}
INPUT_SHAPE = {"mnist_cnn": (1, 28, 28), "lenet5": (1, 32, 32),
               "inception_v3": (3, 299, 299), "efficientnet_v2_s": (3, 384, 384)}  # the others: 3×224×224


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def numerics_batch(name, batch):
    # The small models are compared at the benchmarked batch; the ImageNet ones at ≤ 4 images.
    return batch if name in INPUT_SHAPE else min(batch, 4)


def cnnc_bench(binary, weights, batch, iters):
    p = subprocess.run([binary, "--weights", weights, "--device", "cpu", "--batch", str(batch), "--bench", str(iters)],
                       capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        raise RuntimeError(f"{binary} --bench failed: {p.stderr.strip()[:500]}")
    return float(re.search(r"p50 ([0-9.]+) ms", p.stdout).group(1))


def torch_bench(model, x, iters, warmup):
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times) if times else None


def cnnc_peak_mb(binary, weights, batch):
    p = subprocess.run(["/usr/bin/time", "-f", "%M", binary, "--weights", weights, "--device", "cpu",
                        "--batch", str(batch), "--bench", "3"], capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.strip()[:500])
    return int(p.stderr.strip().splitlines()[-1]) / 1024.0


TORCH_RSS_CHILD = r"""
import os, resource, sys
sys.path.insert(0, sys.argv[1])  # scripts/: a -c program has no __file__ for the one-line bootstrap
import numpy as np, torch
torch.set_num_threads(os.cpu_count())
import gpu_check
from cnnc_py.safetensors_io import DTYPES, read_header
name, batch, weights = sys.argv[2], int(sys.argv[3]), sys.argv[4]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
# The model is built on the meta device and takes the file's tensors, memory-mapped,
# as its parameters (assign=True): no random init, no second copy of the weights.
header, start = read_header(weights)
raw = np.memmap(weights, dtype=np.uint8, mode="c", offset=start)
sd = {k: torch.from_numpy(raw[v["data_offsets"][0]:v["data_offsets"][1]].view(DTYPES[v["dtype"]]).reshape(v["shape"]))
      for k, v in header.items()}
def build():
    if name == "mnist_cnn":
        return gpu_check.MnistCnn()
    if name == "lenet5":
        return gpu_check.LeNet5()
    import torchvision
    if name in ("googlenet", "inception_v3"):
        return getattr(torchvision.models, name)(weights=None, aux_logits=False, init_weights=False)
    return getattr(torchvision.models, name)(weights=None)
try:
    with torch.device("meta"):
        m = build()
except NotImplementedError:
    # RegNet computes its widths with tensors while it is built, which the
    # meta device cannot: build it for real (its random initial weights
    # count in the peak, then the file's replace them).
    m = build()
# Module versions (torchvision's MNASNet refuses a state_dict without its
# `_metadata`, which safetensors does not carry): the freshly built model's.
from collections import OrderedDict
sd = OrderedDict(sd)
sd._metadata = m.state_dict()._metadata
m.load_state_dict(sd, assign=True)
m.eval()
shape = {"mnist_cnn": (1, 28, 28), "lenet5": (1, 32, 32), "inception_v3": (3, 299, 299),
         "efficientnet_v2_s": (3, 384, 384)}.get(name, (3, 224, 224))
x = torch.full((batch,) + shape, 0.5)
with torch.inference_mode():
    m(x)
print(base)
"""


def torch_peak_mb(name, batch, weights):
    """(peak RSS of the PyTorch process, RSS after `import torch`), MB. The child runs under
    /usr/bin/time like the binary: its own getrusage would count this (large) process, whose
    peak Linux carries into a vfork()ed child across execve."""
    p = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-c", TORCH_RSS_CHILD,
                        paths.SCRIPTS, name, str(batch), weights],
                       capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.strip()[-500:])
    base = int(p.stdout.split()[0])
    peak = int(p.stderr.strip().splitlines()[-1])
    return peak / 1024.0, base / 1024.0


def busy_elsewhere(seconds=2.0):
    """The fraction of all CPUs' time that other processes used over `seconds`
    while this one sleeps (from /proc/stat; None where there is none). The
    load average lags by a minute and counts the benchmark's own threads;
    this is what a competing process costs: cnnc's steps wait for their
    slowest thread, so one busy neighbour slowed efficientnet_v2_s 1.57x and
    PyTorch 1.08x (bench/RESULTS.md, 2026-12-04)."""
    def sample():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait
    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def main():
    os.makedirs(WORK, exist_ok=True)
    torch.set_num_threads(os.cpu_count())
    cases = [(c.split(":")[0], int(c.split(":")[1])) for c in os.environ.get("CNNC_BENCH_CASES", DEFAULT_CASES).split()]
    busy = busy_elsewhere()
    if busy is not None and busy > 0.1:
        log(f"WARNING: other processes kept the CPUs {busy:.0%} busy before the run; "
            f"the ratios below will favour PyTorch (cnnc waits for its slowest thread). "
            f"Figures of record need a quiet machine.")
    started = time.time()
    load0 = os.getloadavg()
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads, mkldnn available "
        f"{torch.backends.mkldnn.is_available()}; {ROUNDS} rounds; load average at start {load0[0]:.2f}")
    models = {}
    rows = []
    for name, batch in cases:
        binary = os.path.join(BIN, name)
        if name not in models:
            m, images, weights = gpu_check.make(name)
            models[name] = (m.eval(), images, weights)
        m, images, weights = models[name]
        shape = INPUT_SHAPE.get(name, (3, 224, 224))

        # Numerics, on real (MNIST) or random (ImageNet-sized) inputs.
        nb = numerics_batch(name, batch)
        x = images(nb)
        inp, outp = os.path.join(WORK, f"{name}_{nb}_in.npy"), os.path.join(WORK, f"{name}_{nb}_out.npy")
        np.save(inp, x)
        p = subprocess.run([binary, "--weights", weights, "--input", inp, "--device", "cpu", "--batch", str(nb),
                            "--output", outp, "--show", "0"], capture_output=True, text=True, timeout=900)
        if p.returncode != 0:
            raise RuntimeError(f"{name}: {p.stderr.strip()[:500]}")
        with torch.inference_mode():
            ref = m(torch.from_numpy(x)).numpy()
        ours = np.load(outp)
        err = gpu_check.rel_err(ours, ref)
        evalp = os.path.join(WORK, f"{name}_{nb}_eval.npy")
        if not os.path.exists(evalp) or os.path.getmtime(evalp) < os.path.getmtime(inp):
            p = subprocess.run([CNNC, "run", paths.model(name), "--weights", weights,
                                "--input", inp, "--output", evalp, "--show", "0"],
                               capture_output=True, text=True, timeout=1800)
            if p.returncode != 0:
                raise RuntimeError(f"{name}: cnnc run: {p.stderr.strip()[:500]}")
        err_eval = gpu_check.rel_err(ours, np.load(evalp))
        top1 = bool((ours.argmax(1) == ref.argmax(1)).all())

        # Latency: K from one warmed-up PyTorch pass, so a round takes about ROUND_S per side.
        xt = torch.full((batch,) + shape, 0.5)
        with torch.inference_mode():
            m(xt)
            t = time.perf_counter()
            m(xt)
            one = time.perf_counter() - t
        k = int(min(1000, max(3 if one > 0.5 else 5, ROUND_S / max(one, 1e-6))))
        warm = int(min(50, max(2, 0.3 / max(one, 1e-6))))
        torch_bench(m, xt, 0, warm)
        ours_ms, torch_ms = [], []
        for r in range(ROUNDS):
            first_cnnc = r % 2 == 0
            if first_cnnc:
                ours_ms.append(cnnc_bench(binary, weights, batch, k))
            torch_ms.append(torch_bench(m, xt, k, warm))
            if not first_cnnc:
                ours_ms.append(cnnc_bench(binary, weights, batch, k))
        ours_med, torch_med = statistics.median(ours_ms), statistics.median(torch_ms)

        # Peak memory.
        ours_mb = cnnc_peak_mb(binary, weights, batch)
        torch_mb, torch_base_mb = torch_peak_mb(name, batch, weights)

        ratio = torch_med / ours_med
        target = TARGETS.get((name, batch))
        row = dict(model=name, batch=batch, ours=ours_med, torch=torch_med, ratio=ratio, target=target,
                   met=None if target is None else ratio >= target, ours_mb=ours_mb, torch_mb=torch_mb,
                   torch_base_mb=torch_base_mb, err=err, err_eval=err_eval, top1=top1, nb=nb, k=k,
                   ours_rounds=ours_ms, torch_rounds=torch_ms, load=os.getloadavg()[0])
        rows.append(row)
        log(f"{name} b{batch}: K={k}; cnnc rounds {['%.3f' % v for v in ours_ms]} ms, "
            f"torch rounds {['%.3f' % v for v in torch_ms]} ms; ratio {ratio:.2f}; "
            f"peak {ours_mb:.0f} MB vs {torch_mb:.0f} MB (torch import alone {torch_base_mb:.0f} MB); "
            f"max rel err {err:.2e} vs PyTorch, {err_eval:.2e} vs the evaluator (batch {nb}, top-1 agree {top1}); "
            f"{time.time() - started:.0f} s elapsed")

    load1 = os.getloadavg()
    lines = [
        os.environ.get("CNNC_BENCH_MACHINE", ""),
        f"torch {torch.__version__} ({torch.get_num_threads()} threads, oneDNN/mkldnn available: "
        f"{torch.backends.mkldnn.is_available()}); {ROUNDS} alternating rounds per case; "
        f"load average {load0[0]:.2f} at start, {load1[0]:.2f} at end; "
        f"CPUs busy with other processes before the start: {'unknown' if busy is None else f'{busy:.0%}'}; "
        f"total {time.time() - started:.0f} s",
        "",
        "| model | batch | cnnc ms | PyTorch ms | ratio (PyTorch/cnnc) | target | met? | cnnc peak MB | PyTorch peak MB "
        "| max rel err vs PyTorch | vs evaluator | K |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        target = "—" if r["target"] is None else f"≥ {r['target']:g}"
        met = "—" if r["met"] is None else ("yes" if r["met"] else "**no**")
        err = f"{r['err']:.1e}" + ("" if r["top1"] else " (top-1 differs)")
        lines.append(f"| {r['model']} | {r['batch']} | {r['ours']:.3f} | {r['torch']:.3f} | {r['ratio']:.2f} | {target} | "
                     f"{met} | {r['ours_mb']:.0f} | {r['torch_mb']:.0f} | {err} | {r['err_eval']:.1e} | {r['k']} |")
    lines += ["", "Per-round medians (ms), cnnc / PyTorch, and the 1-minute load average after the case:", ""]
    for r in rows:
        lines.append(f"- {r['model']} b{r['batch']}: " + ", ".join(f"{a:.3f} / {b:.3f}" for a, b in
                                                                     zip(r["ours_rounds"], r["torch_rounds"]))
                     + f" (load {r['load']:.2f})")
    base = statistics.median(r["torch_base_mb"] for r in rows) if rows else 0
    lines += ["", f"PyTorch's peak includes the interpreter and `import torch` ({base:.0f} MB before the model is built)."]
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(OUT, "results.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()

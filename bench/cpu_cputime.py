#!/usr/bin/env python3
"""Single-thread CPU time per inference, cnnc vs PyTorch, side by side in one
run, 3 alternating rounds (median). Far less sensitive to other load on the
machine than wall time: it compares the work each side does per batch.
  cnnc: RAYON_NUM_THREADS=1, perf stat task-clock of --bench K+3 minus --bench 3, / K
  PyTorch: torch.set_num_threads(1), time.process_time() over K passes after 3 warm-ups
Usage (after bench/cpu.sh has built gpu/bin and the weights):
  python3 bench/cpu_cputime.py mnist_cnn:1:1000 lenet5:256:10 resnet18:1:5
"""
import os, sys, time, subprocess, statistics
import pathlib, sys; sys.path.insert(0, str(next(p for p in pathlib.Path(__file__).resolve().parents if (p / "scripts/cnnc_py").is_dir()) / "scripts"))  # noqa: E401,E702 (see scripts/cnnc_py/__init__.py)
from cnnc_py import paths
os.environ.setdefault("OUT", os.environ.get("CNNC_BENCH_OUT", "/tmp/cnnc-cpu-bench"))
import torch; torch.set_num_threads(1)
import gpu_check
B = os.environ.get("CNNC_BIN", paths.GPU_BIN)
def cnnc_cpu(name, w, b, n):
    def tc(k):
        p = subprocess.run(["perf", "stat", "-x,", "-e", "task-clock", f"{B}/{name}", "--weights", w, "--device", "cpu",
                            "--batch", str(b), "--bench", str(k)], capture_output=True, text=True,
                           env=dict(os.environ, RAYON_NUM_THREADS="1"))
        return float([l for l in p.stderr.splitlines() if "task-clock" in l][0].split(",")[0])
    return (tc(n + 3) - tc(3)) / n
def torch_cpu(m, x, n):
    with torch.inference_mode():
        for _ in range(3): m(x)
        t = time.process_time()
        for _ in range(n): m(x)
        return (time.process_time() - t) / n * 1e3
for case in sys.argv[1:]:
    name, b, n = case.split(":"); b = int(b); n = int(n)
    m, images, w = gpu_check.make(name); m.eval()
    shape = {"mnist_cnn": (1, 28, 28), "lenet5": (1, 32, 32)}.get(name, (3, 224, 224))
    x = torch.full((b,) + shape, 0.5)
    ours, theirs = [], []
    for r in range(3):
        ours.append(cnnc_cpu(name, w, b, n)); theirs.append(torch_cpu(m, x, n))
    o, t = statistics.median(ours), statistics.median(theirs)
    print(f"{name} b{b}: 1-thread CPU ms/inference cnnc {o:.3f} (rounds {[round(v,3) for v in ours]}), PyTorch {t:.3f} (rounds {[round(v,3) for v in theirs]}), ratio {t/o:.2f}; load {os.getloadavg()[0]:.1f}", flush=True)

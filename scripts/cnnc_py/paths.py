"""The repository's folders and the files several scripts use, found from this
file's place (scripts/cnnc_py/paths.py), whatever the working directory."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.join(ROOT, "scripts")
MODELS = os.path.join(ROOT, "models")  # the zoo: models/<name>.cnn
DATA = os.path.join(MODELS, "data")  # the committed MNIST digits (see mnist.py)
WEIGHTS = os.path.join(MODELS, "weights")  # the bundled trained weights
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
# `cargo build --release`'s cnnc, and scripts/build-gpu-bins.sh's binaries.
CNNC = os.path.join(ROOT, "target", "release", "cnnc")
GPU_BIN = os.path.join(ROOT, "gpu", "bin")


def model(name):
    """models/<name>.cnn"""
    return os.path.join(MODELS, f"{name}.cnn")

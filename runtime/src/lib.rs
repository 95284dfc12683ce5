//! Runtime support shared by `cnnc` and the binaries it builds; it grows with the evaluator and the executors.

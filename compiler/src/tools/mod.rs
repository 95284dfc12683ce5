//! What the commands do with a checked graph besides building it:
//! [`summary`] (`cnnc summary`, `cnnc check`), [`emit`] (`cnnc emit`, every
//! stage as text), [`eval`] (the reference evaluator, `cnnc run`), [`draw`]
//! (`cnnc graph`) and [`train`] (`cnnc train`).

pub mod draw;
pub mod emit;
pub mod eval;
pub mod summary;
pub mod train;

//! The back end: a fused graph to a built binary.
//!
//! [`kernel_ir`] lowers the fused graph to kernels with their schedules,
//! [`cuda`] prints them as CUDA C++ (device library in `cuda_prelude.cuh`),
//! [`memory`] places every tensor in a few arenas, [`plan`] turns kernels and
//! placements into the runtime's execution plan, and [`build`] writes the
//! driver crate, compiles the kernels with nvcc (cached by [`cache`]) and
//! runs cargo. [`roofline`] bounds each kernel's time from its work and
//! traffic (`cnnc emit --stage roofline`); [`resources`] reads ptxas's
//! registers and shared memory of each compiled kernel and computes its
//! occupancy (`kernels/resources.txt` of a build).

pub mod build;
pub mod cache;
pub mod cuda;
pub mod kernel_ir;
pub mod memory;
pub mod plan;
pub mod resources;
pub mod roofline;

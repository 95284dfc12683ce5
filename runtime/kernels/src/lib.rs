//! The f32 CPU kernels of cnnc, shared by the built binaries' CPU executor
//! (`cnnc-runtime`'s `cpu` module, which plans and schedules them) and by
//! `cnnc train` (which runs their forward and gradient forms), as tract keeps
//! its kernels in `tract-linalg`:
//!
//! - [`activation`]: the one table of activations (names, formulas over any
//!   float type, derivatives, CUDA text) every backend takes its form from;
//! - [`act`]: the plan's activations over slices, vectorised;
//! - [`direct`]: direct convolutions on pixel-major maps (AVX-512 and AVX2
//!   register blocks), and their weight gradients;
//! - [`winograd`]: F(4×4, 3×3) and F(2×2, 5×5)-style Winograd convolutions
//!   (AVX-512);
//! - [`depthwise`]: depthwise convolutions row by row;
//! - [`copy_short`] and [`taps`], small pieces the executor and the trainer's
//!   im2col share.
//!
//! Nothing here knows about plans, arenas or graphs: the inputs are slices
//! and geometries.

/// Calls `$f::<vb, n>($args)`: a register block of `vb` 16-lane vectors by
/// `n` pixels, taps or tiles, at most 24 accumulators (vb 1 or 2: n ≤ 12;
/// vb 4: n ≤ 6). The AVX-512 kernels of `direct` and `winograd` share it.
macro_rules! blocks {
    ($vb:expr, $n:expr, $f:ident, ($($arg:expr),*)) => {
        match ($vb, $n) {
            (1, 12) => $f::<1, 12>($($arg),*),
            (1, 11) => $f::<1, 11>($($arg),*),
            (1, 10) => $f::<1, 10>($($arg),*),
            (1, 9) => $f::<1, 9>($($arg),*),
            (1, 8) => $f::<1, 8>($($arg),*),
            (1, 7) => $f::<1, 7>($($arg),*),
            (1, 6) => $f::<1, 6>($($arg),*),
            (1, 5) => $f::<1, 5>($($arg),*),
            (1, 4) => $f::<1, 4>($($arg),*),
            (1, 3) => $f::<1, 3>($($arg),*),
            (1, 2) => $f::<1, 2>($($arg),*),
            (1, 1) => $f::<1, 1>($($arg),*),
            (2, 12) => $f::<2, 12>($($arg),*),
            (2, 11) => $f::<2, 11>($($arg),*),
            (2, 10) => $f::<2, 10>($($arg),*),
            (2, 9) => $f::<2, 9>($($arg),*),
            (2, 8) => $f::<2, 8>($($arg),*),
            (2, 7) => $f::<2, 7>($($arg),*),
            (2, 6) => $f::<2, 6>($($arg),*),
            (2, 5) => $f::<2, 5>($($arg),*),
            (2, 4) => $f::<2, 4>($($arg),*),
            (2, 3) => $f::<2, 3>($($arg),*),
            (2, 2) => $f::<2, 2>($($arg),*),
            (2, 1) => $f::<2, 1>($($arg),*),
            (4, 6) => $f::<4, 6>($($arg),*),
            (4, 5) => $f::<4, 5>($($arg),*),
            (4, 4) => $f::<4, 4>($($arg),*),
            (4, 3) => $f::<4, 3>($($arg),*),
            (4, 2) => $f::<4, 2>($($arg),*),
            (4, 1) => $f::<4, 1>($($arg),*),
            _ => unreachable!("no block of {} by {}", $vb, $n),
        }
    };
}

pub mod act;
pub mod activation;
pub mod depthwise;
pub mod direct;
pub mod winograd;

/// `dst.copy_from_slice(src)`, without a `memcpy` call for the short rows of
/// small maps (a call costs more than copying 20 floats): below 64 values,
/// two overlapping copies of a fixed size, which compile to vector moves.
/// (Also `cnnc train`'s im2col.)
#[inline(always)]
pub fn copy_short(dst: &mut [f32], src: &[f32]) {
    let n = dst.len();
    assert_eq!(n, src.len());
    macro_rules! two {
        ($c:literal) => {{
            dst[..$c].copy_from_slice(&src[..$c]);
            dst[n - $c..].copy_from_slice(&src[n - $c..]);
        }};
    }
    match n {
        0 => {}
        1 => dst[0] = src[0],
        2 => two!(1),
        3 => two!(2),
        4..=7 => two!(4),
        8..=15 => two!(8),
        16..=31 => two!(16),
        32..=63 => two!(32),
        _ => dst.copy_from_slice(src),
    }
}

/// The taps k in [k0, k1) of a window starting at `start` (dilation `d`)
/// that land inside 0..size.
#[inline]
pub fn taps(start: isize, k: usize, d: usize, size: isize) -> (usize, usize) {
    let d = d as isize;
    let k0 = if start >= 0 { 0 } else { (-start + d - 1) / d };
    let k1 = if start >= size {
        0
    } else {
        ((size - 1 - start) / d + 1).min(k as isize)
    };
    (k0 as usize, (k1.max(k0)) as usize)
}

/// Values in [−0.5, 0.5) from an xorshift generator, for the kernels' tests.
#[cfg(test)]
fn test_data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

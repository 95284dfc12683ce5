//! Model inputs from files: `.npy` arrays, PNG/JPEG images and MNIST IDX files,
//! recognised by their first bytes rather than their names.

use crate::{shape_text, Error, Result, Tensor};
use std::path::{Path, PathBuf};

/// ImageNet channel statistics, as torchvision's transforms use them.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// How images become tensors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageOptions {
    /// Resize the shorter side to this before the centre crop; `None` picks
    /// 256/224 of the input size for 3-channel models (torchvision's recipe)
    /// and the input size itself for 1-channel models.
    pub resize: Option<u32>,
    /// Per-channel mean and std; `None` uses ImageNet statistics for
    /// 3-channel models and none (values in [0, 1]) otherwise.
    pub normalize: Option<(Vec<f32>, Vec<f32>)>,
    /// Leave values in [0, 1] even for 3-channel models.
    pub no_normalize: bool,
}

/// Which samples of a multi-sample file to use (`--index 3` or `--index 0..100`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexRange {
    pub start: usize,
    pub end: usize,
}

impl IndexRange {
    pub fn parse(text: &str) -> Result<IndexRange> {
        let bad = || {
            Error(format!(
                "`--index {text}`: expected a number or a range like `0..100`"
            ))
        };
        let range = match text.split_once("..") {
            Some((a, b)) => IndexRange {
                start: a.trim().parse().map_err(|_| bad())?,
                end: b.trim().parse().map_err(|_| bad())?,
            },
            None => {
                let i: usize = text.trim().parse().map_err(|_| bad())?;
                IndexRange {
                    start: i,
                    end: i.checked_add(1).ok_or_else(bad)?,
                }
            }
        };
        if range.start >= range.end {
            return Err(Error(format!("`--index {text}` selects no samples")));
        }
        Ok(range)
    }
}

/// Options for turning files into one batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InputOptions {
    pub image: ImageOptions,
    pub index: Option<IndexRange>,
    /// Zero padding added around IDX digits (2 turns MNIST's 28×28 into LeNet's 32×32).
    pub pad: usize,
}

/// Largest input file read into memory.
pub const MAX_INPUT_BYTES: u64 = 4 << 30;

/// Reads one or more files into a single `[N, C, H, W]` batch for a model
/// whose per-image input is `chw`.
pub fn load(paths: &[PathBuf], chw: [usize; 3], options: &InputOptions) -> Result<Tensor> {
    if paths.is_empty() {
        return Err(Error("no input given".to_string()));
    }
    let mut data = Vec::new();
    let mut n = 0;
    for path in paths {
        let t = load_one(path, chw, options)?;
        n += t.shape[0];
        data.extend(t.data);
    }
    Tensor::new(vec![n, chw[0], chw[1], chw[2]], data)
}

fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let display = path.display();
    let meta =
        std::fs::metadata(path).map_err(|e| Error(format!("cannot read `{display}`: {e}")))?;
    if meta.is_dir() {
        return Err(Error(format!("`{display}` is a directory")));
    }
    let file =
        std::fs::File::open(path).map_err(|e| Error(format!("cannot read `{display}`: {e}")))?;
    // `take` bounds reads from FIFOs and devices, whose metadata reports no size.
    let mut bytes = Vec::new();
    file.take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error(format!("cannot read `{display}`: {e}")))?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        return Err(Error(format!(
            "`{display}` is larger than {MAX_INPUT_BYTES} bytes"
        )));
    }
    Ok(bytes)
}

fn load_one(path: &Path, chw: [usize; 3], options: &InputOptions) -> Result<Tensor> {
    let bytes = read_bounded(path)?;
    let display = path.display().to_string();
    let with_name = |Error(m)| Error(format!("`{display}`: {m}"));
    if bytes.starts_with(b"\x93NUMPY") {
        let t = npy(&bytes, chw).map_err(with_name)?;
        select(t, options.index).map_err(with_name)
    } else if bytes.starts_with(&[0, 0, 8, 3]) {
        idx_images(&bytes, chw, options).map_err(with_name)
    } else if bytes.starts_with(b"\x89PNG") || bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        if options.index.is_some() {
            return Err(Error(format!(
                "`--index` picks samples from .npy and IDX files; `{display}` is one image"
            )));
        }
        image(&bytes, chw, &options.image).map_err(with_name)
    } else if bytes.is_empty() {
        Err(Error(format!("`{display}` is empty")))
    } else {
        Err(Error(format!(
            "`{display}`: unknown input format (expected .npy, PNG, JPEG or an MNIST IDX image file)"
        )))
    }
}

fn select(t: Tensor, index: Option<IndexRange>) -> Result<Tensor> {
    let Some(range) = index else { return Ok(t) };
    let n = t.shape[0];
    if range.end > n {
        return Err(Error(format!(
            "`--index {}..{}` is out of range: the file has {n} samples",
            range.start, range.end
        )));
    }
    let per: usize = t.shape[1..].iter().product();
    let mut shape = t.shape.clone();
    shape[0] = range.end - range.start;
    Tensor::new(shape, t.data[range.start * per..range.end * per].to_vec())
}

fn npy(bytes: &[u8], chw: [usize; 3]) -> Result<Tensor> {
    let array = npyz::NpyFile::new(bytes).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error("the .npy header is truncated".to_string())
        } else {
            Error(format!("not a readable .npy file: {e}"))
        }
    })?;
    let shape: Vec<usize> = array.shape().iter().map(|&d| d as usize).collect();
    let order = array.order();
    if order == npyz::Order::Fortran {
        return Err(Error(
            "Fortran-ordered arrays are not supported; save with np.ascontiguousarray".to_string(),
        ));
    }
    let dtype = array.dtype();
    let type_str = match &dtype {
        npyz::DType::Plain(t) => t.to_string(),
        _ => "a structured type".to_string(),
    };
    // Say how much is missing rather than "failed to fill whole buffer".
    let item = match type_str.as_str() {
        "<f4" => 4,
        "<f8" => 8,
        "|u1" => 1,
        _ => 0,
    };
    if let (true, Some(start)) = (item > 0, npy_data_start(bytes)) {
        let need = shape
            .iter()
            .try_fold(item, |acc: usize, &d| acc.checked_mul(d));
        let have = bytes.len().saturating_sub(start);
        if need.is_none_or(|n| have < n) {
            return Err(Error(format!(
                "the header promises shape {} of `{type_str}`{} but only {have} bytes of data follow (truncated?)",
                shape_text(&shape),
                need.map(|n| format!(" ({n} bytes)")).unwrap_or_default()
            )));
        }
    }
    let data: Vec<f32> = match type_str.as_str() {
        "<f4" => array.into_vec::<f32>().map_err(read_err)?,
        "<f8" => array
            .into_vec::<f64>()
            .map_err(read_err)?
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        "|u1" => array
            .into_vec::<u8>()
            .map_err(read_err)?
            .into_iter()
            .map(|v| v as f32 / 255.0)
            .collect(),
        other => {
            return Err(Error(format!(
                "dtype `{other}` is not supported (use float32, float64 or uint8)"
            )));
        }
    };
    let full = match shape.len() {
        4 => shape.clone(),
        3 => vec![1, shape[0], shape[1], shape[2]],
        _ => {
            return Err(Error(format!(
                "array has shape {}; expected [N, C, H, W] or [C, H, W]",
                shape_text(&shape)
            )))
        }
    };
    if full[1..] != chw {
        return Err(Error(format!(
            "array has shape {}, but the model takes {} per image{}",
            shape_text(&shape),
            shape_text(&chw),
            if full[1] != chw[0] {
                " (the channel count differs)"
            } else {
                " (resize it before saving; .npy inputs are used as they are)"
            }
        )));
    }
    Tensor::new(full, data)
}

/// Where the data of a .npy file starts: after the magic, version, header length and header.
fn npy_data_start(bytes: &[u8]) -> Option<usize> {
    match bytes.get(6)? {
        1 => Some(10 + u16::from_le_bytes([*bytes.get(8)?, *bytes.get(9)?]) as usize),
        2 | 3 => Some(
            12 + u32::from_le_bytes([
                *bytes.get(8)?,
                *bytes.get(9)?,
                *bytes.get(10)?,
                *bytes.get(11)?,
            ]) as usize,
        ),
        _ => None,
    }
}

fn read_err(e: std::io::Error) -> Error {
    Error(format!("the .npy data is truncated or unreadable: {e}"))
}

/// MNIST IDX image file: magic 0x00000803, then N, rows, cols as big-endian u32, then u8 pixels.
fn idx_images(bytes: &[u8], chw: [usize; 3], options: &InputOptions) -> Result<Tensor> {
    if bytes.len() < 16 {
        return Err(Error("the IDX header is truncated".to_string()));
    }
    let be = |i: usize| {
        u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]) as usize
    };
    let (n, rows, cols) = (be(4), be(8), be(12));
    let per = rows
        .checked_mul(cols)
        .ok_or_else(|| Error("IDX sizes overflow".to_string()))?;
    let needed = per.checked_mul(n).and_then(|v| v.checked_add(16));
    if needed != Some(bytes.len()) {
        return Err(Error(format!(
            "the IDX header promises {n} images of {rows}×{cols} but the file has {} bytes of pixels (truncated?)",
            bytes.len() - 16
        )));
    }
    if chw[0] != 1 {
        return Err(Error(format!(
            "IDX files hold greyscale images, but the model takes {} channels",
            chw[0]
        )));
    }
    let (h, w) = (rows + 2 * options.pad, cols + 2 * options.pad);
    if (h, w) != (chw[1], chw[2]) {
        let hint = if chw[1] >= rows
            && (chw[1] - rows).is_multiple_of(2)
            && chw[1] - rows == chw[2].saturating_sub(cols)
        {
            format!(
                "; pass `--pad {}` to pad them with zeros",
                (chw[1] - rows) / 2
            )
        } else {
            String::new()
        };
        return Err(Error(format!(
            "IDX images are {rows}×{cols}{}, but the model takes {}×{}{hint}",
            if options.pad > 0 {
                format!(" ({h}×{w} padded)")
            } else {
                String::new()
            },
            chw[1],
            chw[2]
        )));
    }
    let range = options.index.unwrap_or(IndexRange { start: 0, end: n });
    if range.end > n {
        return Err(Error(format!(
            "`--index {}..{}` is out of range: the file has {n} images",
            range.start, range.end
        )));
    }
    let count = range.end - range.start;
    let mut data = vec![0f32; count * h * w];
    for (k, i) in (range.start..range.end).enumerate() {
        let src = &bytes[16 + i * per..16 + (i + 1) * per];
        for r in 0..rows {
            for c in 0..cols {
                data[k * h * w + (r + options.pad) * w + c + options.pad] =
                    src[r * cols + c] as f32 / 255.0;
            }
        }
    }
    Tensor::new(vec![count, 1, h, w], data)
}

/// Reads MNIST IDX labels (magic 0x00000801).
pub fn idx_labels(path: &Path) -> Result<Vec<u8>> {
    let bytes = read_bounded(path)?;
    if bytes.len() < 8 || !bytes.starts_with(&[0, 0, 8, 1]) {
        return Err(Error(format!(
            "`{}` is not an IDX label file",
            path.display()
        )));
    }
    let n = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    if bytes.len() != 8 + n {
        return Err(Error(format!(
            "`{}`: the IDX header promises {n} labels but the file is truncated",
            path.display()
        )));
    }
    Ok(bytes[8..].to_vec())
}

fn image(bytes: &[u8], chw: [usize; 3], options: &ImageOptions) -> Result<Tensor> {
    let [c, h, w] = chw;
    if c != 1 && c != 3 {
        return Err(Error(format!(
            "images can feed 1- or 3-channel models; this model takes {c} channels"
        )));
    }
    let decoded = image::load_from_memory(bytes)
        .map_err(|e| Error(format!("cannot decode the image: {e}")))?;
    let (iw, ih) = (decoded.width(), decoded.height());
    if iw == 0 || ih == 0 {
        return Err(Error("the image is empty".to_string()));
    }
    // Resize the shorter side, then crop the centre, as torchvision's Resize + CenterCrop do.
    let target_short = options.resize.unwrap_or(if c == 3 {
        ((h.min(w) as f64) * 256.0 / 224.0).round() as u32
    } else {
        h.min(w) as u32
    });
    if (target_short as usize) < h.max(w) && options.resize.is_some() {
        return Err(Error(format!(
            "`--resize {target_short}` is smaller than the model input {h}×{w}"
        )));
    }
    let target_short = target_short.max(h.max(w) as u32);
    let (rw, rh) = if iw <= ih {
        (
            target_short,
            ((ih as u64 * target_short as u64) / iw as u64).max(1) as u32,
        )
    } else {
        (
            ((iw as u64 * target_short as u64) / ih as u64).max(1) as u32,
            target_short,
        )
    };
    let resized = decoded.resize_exact(rw, rh, image::imageops::FilterType::Triangle);
    let left = (rw as usize - w) / 2;
    let top = (rh as usize - h) / 2;
    let cropped = resized.crop_imm(left as u32, top as u32, w as u32, h as u32);
    let (mean, std) = match (&options.normalize, options.no_normalize, c) {
        (_, true, _) => (vec![0.0; c], vec![1.0; c]),
        (Some((m, s)), _, _) => {
            if m.len() != c || s.len() != c {
                return Err(Error(format!("`--mean`/`--std` need {c} values each")));
            }
            (m.clone(), s.clone())
        }
        (None, _, 3) => (IMAGENET_MEAN.to_vec(), IMAGENET_STD.to_vec()),
        (None, _, _) => (vec![0.0], vec![1.0]),
    };
    let mut data = vec![0f32; c * h * w];
    if c == 3 {
        let rgb = cropped.to_rgb8();
        for (x, y, p) in rgb.enumerate_pixels() {
            for ch in 0..3 {
                data[ch * h * w + y as usize * w + x as usize] =
                    (p.0[ch] as f32 / 255.0 - mean[ch]) / std[ch];
            }
        }
    } else {
        let grey = cropped.to_luma8();
        for (x, y, p) in grey.enumerate_pixels() {
            data[y as usize * w + x as usize] = (p.0[0] as f32 / 255.0 - mean[0]) / std[0];
        }
    }
    Tensor::new(vec![1, c, h, w], data)
}

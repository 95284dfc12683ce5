//! Model inputs from files: `.npy` arrays, PNG/JPEG images and MNIST IDX files,
//! recognised by their first bytes rather than their names.

use crate::{shape_text, Error, Result, Tensor};
use std::io::Read;
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
    /// Refuse an image whose size or colours differ from the model input
    /// instead of converting it (`--strict-input`).
    pub strict: bool,
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

/// Largest PNG or JPEG file read, and the decoder limits that stop
/// decompression bombs (a small file that claims a huge image).
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;
pub const MAX_IMAGE_SIDE: u32 = 16384;
pub const MAX_IMAGE_ALLOC: u64 = 512 << 20;
pub const MAX_IMAGE_PIXELS: u64 = 64 << 20;
/// Largest image after the resize step (pixels), so a 16384×1 strip cannot
/// be stretched into billions of pixels.
pub const MAX_RESIZED_PIXELS: u64 = 64 << 20;

/// Reads one or more files into a single `[N, C, H, W]` batch for a model
/// whose per-image input is `chw`.
pub fn load(paths: &[PathBuf], chw: [usize; 3], options: &InputOptions) -> Result<Tensor> {
    load_noting(paths, chw, options, &mut Vec::new())
}

/// [`load`], which also appends to `notes` what was converted to fit the
/// model (`x.png: 320×240 RGB, resized to 37×28, centre-cropped to 28×28,
/// made greyscale`), one line per converted image, so a caller can say so
/// instead of answering confidently about a picture the model never saw.
pub fn load_noting(
    paths: &[PathBuf],
    chw: [usize; 3],
    options: &InputOptions,
    notes: &mut Vec<String>,
) -> Result<Tensor> {
    if paths.is_empty() {
        return Err(Error("no input given".to_string()));
    }
    let mut data = Vec::new();
    let mut n = 0;
    for path in paths {
        let t = load_one(path, chw, options, notes)?;
        n += t.shape[0];
        data.extend(t.data);
    }
    if n == 0 {
        return Err(Error(
            "the inputs hold no samples (a batch of 0)".to_string(),
        ));
    }
    Tensor::new(vec![n, chw[0], chw[1], chw[2]], data)
}

fn open(path: &Path) -> Result<std::fs::File> {
    let display = path.display();
    let meta =
        std::fs::metadata(path).map_err(|e| Error(format!("cannot read `{display}`: {e}")))?;
    if meta.is_dir() {
        return Err(Error(format!("`{display}` is a directory")));
    }
    std::fs::File::open(path).map_err(|e| Error(format!("cannot read `{display}`: {e}")))
}

/// Appends bytes from `reader` until `bytes` holds `limit` bytes or the stream ends.
fn read_up_to(reader: &mut impl Read, bytes: &mut Vec<u8>, limit: u64) -> Result<()> {
    let want = limit.saturating_sub(bytes.len() as u64);
    reader
        .take(want)
        .read_to_end(bytes)
        .map_err(|e| Error(format!("cannot read: {e}")))?;
    Ok(())
}

fn load_one(
    path: &Path,
    chw: [usize; 3],
    options: &InputOptions,
    notes: &mut Vec<String>,
) -> Result<Tensor> {
    let file = open(path)?;
    let display = path.display().to_string();
    let mut converted = None;
    let t = from_reader(std::io::BufReader::new(file), chw, options, &mut converted).map_err(
        |Error(m)| {
            if m.starts_with("`--index` picks") {
                Error(format!(
                    "`--index` picks samples from .npy and IDX files; `{display}` is one image"
                ))
            } else if m == "empty" {
                Error(format!("`{display}` is empty"))
            } else if let Some(rest) = m.strip_prefix("unknown input format") {
                Error(format!("`{display}`: unknown input format{rest}"))
            } else {
                Error(format!("`{display}`: {m}"))
            }
        },
    )?;
    if let Some(what) = converted {
        notes.push(format!("`{display}`: {what}"));
    }
    Ok(t)
}

/// Decodes one input file held in memory, as [`load`] decodes a file; the
/// fuzz targets call this.
pub fn from_bytes(bytes: &[u8], chw: [usize; 3], options: &InputOptions) -> Result<Tensor> {
    from_reader(bytes, chw, options, &mut None)
}

/// Recognises the format by its first bytes, then reads only as much as the
/// format's header declares (bounded by [`MAX_INPUT_BYTES`]), so a FIFO or a
/// device such as `/dev/zero` never makes it read without end: unknown
/// bytes are rejected after 16 bytes.
/// `converted` receives what was done to an image to fit the model, if anything.
fn from_reader(
    mut reader: impl Read,
    chw: [usize; 3],
    options: &InputOptions,
    converted: &mut Option<String>,
) -> Result<Tensor> {
    let mut bytes = Vec::new();
    read_up_to(&mut reader, &mut bytes, 16)?;
    if bytes.starts_with(b"\x93NUMPY") {
        let limit = npy_file_len(&mut reader, &mut bytes)?;
        read_up_to(&mut reader, &mut bytes, limit)?;
        let t = npy(&bytes, chw)?;
        select(t, options.index)
    } else if bytes.starts_with(&[0, 0, 8, 3]) {
        if bytes.len() >= 16 {
            let limit = idx_file_len(&bytes, 3);
            read_up_to(&mut reader, &mut bytes, limit)?;
        }
        idx_images(&bytes, chw, options)
    } else if bytes.starts_with(b"\x89PNG") || bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        if options.index.is_some() {
            return Err(Error(
                "`--index` picks samples from .npy and IDX files; this is one image".to_string(),
            ));
        }
        read_up_to(&mut reader, &mut bytes, MAX_IMAGE_FILE_BYTES + 1)?;
        if bytes.len() as u64 > MAX_IMAGE_FILE_BYTES {
            return Err(Error(format!(
                "image files larger than {MAX_IMAGE_FILE_BYTES} bytes are not read"
            )));
        }
        let (t, what) = image(&bytes, chw, &options.image)?;
        *converted = what;
        Ok(t)
    } else if bytes.is_empty() {
        Err(Error("empty".to_string()))
    } else {
        Err(Error(
            "unknown input format (expected .npy, PNG, JPEG or an MNIST IDX image file)"
                .to_string(),
        ))
    }
}

/// How many bytes of an IDX file to read: the header's promise plus one
/// (to see trailing data), at most [`MAX_INPUT_BYTES`] plus one.
fn idx_file_len(head: &[u8], dims: usize) -> u64 {
    let header = 4 + 4 * dims as u64;
    let be = |i: usize| u32::from_be_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]) as u64;
    let items = (0..dims).fold(1u64, |acc, d| acc.saturating_mul(be(4 + 4 * d)));
    items.saturating_add(header).min(MAX_INPUT_BYTES) + 1
}

/// Reads the .npy header and returns how many bytes of the file to read:
/// header plus the data its shape and dtype promise, bounded by [`MAX_INPUT_BYTES`].
fn npy_file_len(reader: &mut impl Read, bytes: &mut Vec<u8>) -> Result<u64> {
    const MAX_HEADER: usize = 1 << 20;
    let Some(start) = npy_data_start(bytes) else {
        return Ok(bytes.len() as u64);
    };
    if start > MAX_HEADER {
        return Err(Error(format!(
            "the .npy header is {start} bytes long; headers over {MAX_HEADER} bytes are not read"
        )));
    }
    read_up_to(reader, bytes, start as u64)?;
    npy_check_shape(bytes)?;
    let Ok(array) = npyz::NpyFile::new(&bytes[..]) else {
        // npy() reports the broken header.
        return Ok(bytes.len() as u64);
    };
    let item: u64 = match array.dtype() {
        npyz::DType::Plain(t) => match t.to_string().as_str() {
            "<f4" => 4,
            "<f8" => 8,
            "|u1" => 1,
            _ => 0,
        },
        _ => 0,
    };
    let data = array
        .shape()
        .iter()
        .fold(item, |acc, &d| acc.saturating_mul(d));
    Ok((start as u64).saturating_add(data).min(MAX_INPUT_BYTES))
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
    if npy_data_start(bytes).is_none_or(|start| bytes.len() < start) && bytes.len() < 12 {
        return Err(Error("the .npy header is truncated".to_string()));
    }
    npy_check_shape(bytes)?;
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

/// Checks the `shape` of a .npy header before npyz sees it: npyz multiplies
/// the dimensions without overflow checks (a panic in debug builds, a wrong
/// size in release builds). numpy writes `'shape': (2, 3, 4), `; anything we
/// cannot read that way is refused.
fn npy_check_shape(bytes: &[u8]) -> Result<()> {
    let Some(start) = npy_data_start(bytes) else {
        return Ok(()); // npyz reports the broken preamble
    };
    let header = &bytes[bytes.len().min(10)..bytes.len().min(start)];
    let text = String::from_utf8_lossy(header);
    // npyz parses the header as a Python literal with backtracking that is
    // exponential in the nesting: a 39-byte header of `{{{{…` hung it for
    // minutes (found by fuzzing). numpy writes one flat dict with one tuple.
    let count = |c: char| text.chars().filter(|&x| x == c).count();
    if count('{') > 1 || count('(') > 1 || count('[') > 0 {
        return Err(Error(
            "the .npy header is not a plain array header (nested or structured headers are not supported)"
                .to_string(),
        ));
    }
    let unreadable = || Error("cannot read the `shape` of the .npy header".to_string());
    let Some(at) = text.find("'shape'").or_else(|| text.find("\"shape\"")) else {
        return Ok(()); // no shape key: npyz reports it
    };
    let rest = text[at + 7..].trim_start();
    let rest = rest.strip_prefix(':').ok_or_else(unreadable)?.trim_start();
    let rest = rest.strip_prefix('(').ok_or_else(unreadable)?;
    let inner = &rest[..rest.find(')').ok_or_else(unreadable)?];
    let mut bytes_needed: u64 = 8;
    for part in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let d: u64 = part.parse().map_err(|_| unreadable())?;
        bytes_needed = bytes_needed.checked_mul(d).ok_or_else(|| {
            Error(format!(
                "the .npy shape ({inner}) is too large: its size overflows 64 bits"
            ))
        })?;
    }
    Ok(())
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
    let mut reader = std::io::BufReader::new(open(path)?);
    let mut bytes = Vec::new();
    read_up_to(&mut reader, &mut bytes, 8)?;
    if bytes.len() == 8 && bytes.starts_with(&[0, 0, 8, 1]) {
        let limit = idx_file_len(&bytes, 1);
        read_up_to(&mut reader, &mut bytes, limit)?;
    }
    idx_labels_from_bytes(&bytes).map_err(|Error(m)| Error(format!("`{}`{m}", path.display())))
}

/// Checks and returns the labels of an IDX label file held in memory; the
/// error text follows the file name.
pub fn idx_labels_from_bytes(bytes: &[u8]) -> Result<Vec<u8>> {
    if bytes.len() < 8 || !bytes.starts_with(&[0, 0, 8, 1]) {
        return Err(Error(
            " is not an IDX label file (it does not start with the magic number 0x00000801)"
                .to_string(),
        ));
    }
    let n = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    if bytes.len() != 8 + n {
        return Err(Error(format!(
            ": the IDX header promises {n} labels but the file has {} bytes of labels",
            bytes.len() - 8
        )));
    }
    Ok(bytes[8..].to_vec())
}

/// Decodes an image and fits it to the model: resize the shorter side, crop
/// the centre, convert the colours, normalise. Returns the tensor and, when
/// the image was not already the model's size and colours, what was done.
fn image(
    bytes: &[u8],
    chw: [usize; 3],
    options: &ImageOptions,
) -> Result<(Tensor, Option<String>)> {
    let [c, h, w] = chw;
    if c != 1 && c != 3 {
        return Err(Error(format!(
            "images can feed 1- or 3-channel models; this model takes {c} channels"
        )));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_ALLOC);
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| Error(format!("cannot decode the image: {e}")))
    };
    // The size from the header, before anything is decoded or allocated.
    let (iw, ih) = reader()?
        .into_dimensions()
        .map_err(|e| Error(format!("cannot decode the image: {e}")))?;
    if iw > MAX_IMAGE_SIDE || ih > MAX_IMAGE_SIDE || iw as u64 * ih as u64 > MAX_IMAGE_PIXELS {
        return Err(Error(format!(
            "the image is {iw}×{ih} pixels; images over {MAX_IMAGE_SIDE} pixels a side or {MAX_IMAGE_PIXELS} pixels in all are not decoded"
        )));
    }
    let mut reader = reader()?;
    reader.limits(limits);
    let decoded = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => Error(format!(
            "cannot decode the image: it is larger than the decoder limits ({MAX_IMAGE_SIDE} pixels a side, {MAX_IMAGE_ALLOC} bytes in memory)"
        )),
        e => Error(format!("cannot decode the image: {e}")),
    })?;
    let (iw, ih) = (decoded.width(), decoded.height());
    if iw == 0 || ih == 0 {
        return Err(Error("the image is empty".to_string()));
    }
    let colour = decoded.color();
    let kind = match (colour.has_color(), colour.has_alpha()) {
        (true, true) => "RGBA",
        (true, false) => "RGB",
        (false, true) => "greyscale with transparency",
        (false, false) => "greyscale",
    };
    // With --strict-input an image is used only as it is: the model's size,
    // and colour for a 3-channel model or greyscale for a 1-channel one.
    if options.strict && ((iw as usize, ih as usize) != (w, h) || colour.has_color() != (c == 3)) {
        let model_kind = if c == 3 { "RGB" } else { "greyscale" };
        return Err(Error(format!(
            "the image is {iw}×{ih} {kind}, but the model takes {w}×{h} {model_kind}; `--strict-input` refuses to resize, crop or convert it"
        )));
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
    let target_short = if options.strict {
        h.min(w) as u32
    } else {
        target_short.max(h.max(w) as u32)
    };
    let short = target_short as u64;
    let (rw, rh) = if iw <= ih {
        (short, ((ih as u64 * short) / iw as u64).max(1))
    } else {
        (((iw as u64 * short) / ih as u64).max(1), short)
    };
    if rw.saturating_mul(rh) > MAX_RESIZED_PIXELS {
        return Err(Error(format!(
            "the image is {iw}×{ih}; resizing its shorter side to {target_short} would make it {rw}×{rh}, over the limit of {MAX_RESIZED_PIXELS} pixels"
        )));
    }
    let (rw, rh) = (rw as u32, rh as u32);
    let mut steps = Vec::new();
    if (iw, ih) != (rw, rh) {
        steps.push(format!("resized to {rw}×{rh}"));
    }
    if (rw as usize, rh as usize) != (w, h) {
        steps.push(format!("centre-cropped to {w}×{h}"));
    }
    match (c, colour.has_color()) {
        (1, true) => steps.push("made greyscale".to_string()),
        (3, false) => steps.push("greyscale copied to 3 channels".to_string()),
        _ => {}
    }
    if colour.has_alpha() {
        steps.push("transparency dropped".to_string());
    }
    let converted = (!steps.is_empty()).then(|| format!("{iw}×{ih} {kind}, {}", steps.join(", ")));
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
    Ok((Tensor::new(vec![1, c, h, w], data)?, converted))
}

/// The input rows of docs/reliability.md: malformed, hostile and endless
/// inputs get an error naming the problem, after a bounded read.
#[cfg(test)]
mod tests {
    use super::*;

    fn error(bytes: &[u8], chw: [usize; 3]) -> String {
        match from_bytes(bytes, chw, &InputOptions::default()) {
            Ok(t) => panic!("accepted: shape {:?}", t.shape),
            Err(Error(m)) => m,
        }
    }

    fn npy_header(descr: &str, shape: &str) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((header.len() as u16).to_le_bytes());
        bytes.extend(header.as_bytes());
        bytes
    }

    fn idx(n: u32, rows: u32, cols: u32, pixels: usize) -> Vec<u8> {
        let mut bytes = vec![0, 0, 8, 3];
        for v in [n, rows, cols] {
            bytes.extend(v.to_be_bytes());
        }
        bytes.extend(vec![7u8; pixels]);
        bytes
    }

    /// A PNG of the given size with almost no pixel data: enough for a
    /// decoder to read the header and decide how much memory it would need.
    fn png_header_only(width: u32, height: u32) -> Vec<u8> {
        fn crc32(bytes: &[u8]) -> u32 {
            let mut crc = !0u32;
            for &b in bytes {
                crc ^= b as u32;
                for _ in 0..8 {
                    crc = if crc & 1 != 0 {
                        (crc >> 1) ^ 0xedb8_8320
                    } else {
                        crc >> 1
                    };
                }
            }
            !crc
        }
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut chunk = b"IHDR".to_vec();
        chunk.extend(width.to_be_bytes());
        chunk.extend(height.to_be_bytes());
        chunk.extend([8, 6, 0, 0, 0]); // 8-bit RGBA
        png.extend(13u32.to_be_bytes());
        png.extend(&chunk);
        png.extend(crc32(&chunk).to_be_bytes());
        // A few bytes of image data (an empty zlib stream), so decoders get past the header.
        let mut idat = b"IDAT".to_vec();
        idat.extend([0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
        png.extend(8u32.to_be_bytes());
        png.extend(&idat);
        png.extend(crc32(&idat).to_be_bytes());
        png.extend(0u32.to_be_bytes());
        png.extend(b"IEND");
        png.extend(crc32(b"IEND").to_be_bytes());
        png
    }

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        image::GrayImage::new(width, height)
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .unwrap();
        bytes
    }

    #[test]
    fn decompression_bombs_stop_at_the_decoder_limits() {
        // 100000×100000 RGBA would need 40 GB, 16000×16000 RGBA 1 GB; refused from the header.
        for (w, h) in [(100_000, 100_000), (16_000, 16_000), (16_385, 1)] {
            let m = error(&png_header_only(w, h), [3, 8, 8]);
            assert_eq!(m, format!("the image is {w}×{h} pixels; images over 16384 pixels a side or 67108864 pixels in all are not decoded"));
        }
        // Within the size limits, a header without pixel data is a decode error.
        let m = error(&png_header_only(64, 64), [3, 8, 8]);
        assert!(m.starts_with("cannot decode the image"), "{m}");
        // A JPEG frame header claiming 65535×65535 pixels.
        let mut jpeg = vec![0xff, 0xd8, 0xff, 0xc0, 0, 17, 8, 0xff, 0xff, 0xff, 0xff, 3];
        jpeg.extend([1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0]);
        jpeg.extend([0xff, 0xd9]);
        let m = error(&jpeg, [3, 8, 8]);
        assert!(m.starts_with("cannot decode the image"), "{m}");
        // A valid 16384×1 strip would become 2097152×128 pixels after the resize step.
        let m = error(&png(16384, 1), [1, 128, 128]);
        assert!(m.contains("the image is 16384×1; resizing its shorter side to 128 would make it 2097152×128, over the limit of 67108864 pixels"), "{m}");
    }

    #[test]
    fn wrong_channels_or_size() {
        let m = error(&png(8, 8), [2, 8, 8]);
        assert_eq!(
            m,
            "images can feed 1- or 3-channel models; this model takes 2 channels"
        );
        let mut npy = npy_header("<f4", "(1, 2, 4, 4)");
        npy.extend(vec![0u8; 2 * 16 * 4]);
        assert_eq!(error(&npy, [3, 4, 4]), "array has shape [1, 2, 4, 4], but the model takes [3, 4, 4] per image (the channel count differs)");
        assert_eq!(error(&npy, [2, 5, 5]), "array has shape [1, 2, 4, 4], but the model takes [2, 5, 5] per image (resize it before saving; .npy inputs are used as they are)");
        let m = error(&idx(1, 28, 28, 784), [1, 32, 32]);
        assert_eq!(m, "IDX images are 28×28, but the model takes 32×32; pass `--pad 2` to pad them with zeros");
        let m = error(&idx(1, 28, 28, 784), [3, 28, 28]);
        assert_eq!(
            m,
            "IDX files hold greyscale images, but the model takes 3 channels"
        );
    }

    #[test]
    fn npy_wrong_byte_count_or_dtype() {
        let mut short = npy_header("<f4", "(1, 3, 4, 4)");
        short.extend(vec![0u8; 100]);
        assert_eq!(error(&short, [3, 4, 4]), "the header promises shape [1, 3, 4, 4] of `<f4` (192 bytes) but only 100 bytes of data follow (truncated?)");
        // A shape whose size overflows 64 bits (npyz alone would overflow: a
        // panic in debug builds) and one that is merely huge: no allocation.
        let huge = npy_header("<f8", "(4611686018427387904, 3, 4, 4)");
        assert_eq!(error(&huge, [3, 4, 4]), "the .npy shape (4611686018427387904, 3, 4, 4) is too large: its size overflows 64 bits");
        let large = npy_header("<f8", "(1000000000, 3, 4, 4)");
        let m = error(&large, [3, 4, 4]);
        assert!(
            m.contains("(384000000000 bytes) but only 0 bytes of data follow (truncated?)"),
            "{m}"
        );
        let odd = npy_header("<f8", "3");
        assert_eq!(
            error(&odd, [3, 4, 4]),
            "cannot read the `shape` of the .npy header"
        );
        // Found by fuzzing: npyz's header parser is exponential in the nesting;
        // this 39-byte file took minutes before the check.
        let mut nested = b"\x93NUMPY\x01\x00".to_vec();
        nested.extend(29u16.to_le_bytes());
        nested.extend([b'{'; 29]);
        assert_eq!(error(&nested, [3, 4, 4]), "the .npy header is not a plain array header (nested or structured headers are not supported)");
        let structured = npy_header("[('a', '<f4')]", "(3, 4, 4)");
        assert!(error(&structured, [3, 4, 4]).contains("not a plain array header"));
        let mut ints = npy_header("<i2", "(1, 3, 4, 4)");
        ints.extend(vec![0u8; 96]);
        assert_eq!(
            error(&ints, [3, 4, 4]),
            "dtype `<i2` is not supported (use float32, float64 or uint8)"
        );
        let mut big_endian = npy_header(">f4", "(1, 3, 4, 4)");
        big_endian.extend(vec![0u8; 192]);
        assert_eq!(
            error(&big_endian, [3, 4, 4]),
            "dtype `>f4` is not supported (use float32, float64 or uint8)"
        );
        // A version-2 header that claims to be 4 GB long is not read.
        let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
        v2.extend(u32::MAX.to_le_bytes());
        let m = error(&v2, [3, 4, 4]);
        assert_eq!(
            m,
            "the .npy header is 4294967307 bytes long; headers over 1048576 bytes are not read"
        );
        assert_eq!(
            error(b"\x93NUMPY\x01", [3, 4, 4]),
            "the .npy header is truncated"
        );
    }

    #[test]
    fn idx_bad_magic_truncated_or_trailing() {
        let mut bad = idx(1, 4, 4, 16);
        bad[3] = 2;
        assert_eq!(
            error(&bad, [1, 4, 4]),
            "unknown input format (expected .npy, PNG, JPEG or an MNIST IDX image file)"
        );
        assert_eq!(error(&idx(2, 4, 4, 20), [1, 4, 4]), "the IDX header promises 2 images of 4×4 but the file has 20 bytes of pixels (truncated?)");
        assert_eq!(error(&idx(1, 4, 4, 17), [1, 4, 4]), "the IDX header promises 1 images of 4×4 but the file has 17 bytes of pixels (truncated?)");
        assert_eq!(
            error(&[0, 0, 8, 3, 0, 0], [1, 4, 4]),
            "the IDX header is truncated"
        );
        // 2^32-1 images of 65535×65535: the product overflows nothing and nothing is allocated.
        let m = error(&idx(u32::MAX, 65535, 65535, 0), [1, 4, 4]);
        assert!(m.contains("but the file has 0 bytes of pixels"), "{m}");
        assert_eq!(
            idx_labels_from_bytes(&[0, 0, 8, 3, 0, 0, 0, 0])
                .unwrap_err()
                .0,
            " is not an IDX label file (it does not start with the magic number 0x00000801)"
        );
        assert_eq!(
            idx_labels_from_bytes(&[0, 0, 8, 1, 0, 0, 0, 3, 1])
                .unwrap_err()
                .0,
            ": the IDX header promises 3 labels but the file has 1 bytes of labels"
        );
    }

    #[test]
    fn batch_of_zero() {
        let dir = std::env::temp_dir().join(format!("cnnc-input-{}-zero", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("none.idx");
        std::fs::write(&path, idx(0, 4, 4, 0)).unwrap();
        let m = load(
            std::slice::from_ref(&path),
            [1, 4, 4],
            &InputOptions::default(),
        )
        .unwrap_err()
        .0;
        assert_eq!(m, "the inputs hold no samples (a batch of 0)");
        std::fs::write(&path, npy_header("<f4", "(0, 1, 4, 4)")).unwrap();
        let m = load(&[path], [1, 4, 4], &InputOptions::default())
            .unwrap_err()
            .0;
        assert_eq!(m, "the inputs hold no samples (a batch of 0)");
        assert_eq!(
            load(&[], [1, 4, 4], &InputOptions::default())
                .unwrap_err()
                .0,
            "no input given"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn dev_zero_and_endless_fifos_are_read_boundedly() {
        let options = InputOptions::default();
        let m = load(&[PathBuf::from("/dev/zero")], [1, 4, 4], &options)
            .unwrap_err()
            .0;
        assert_eq!(m, "`/dev/zero`: unknown input format (expected .npy, PNG, JPEG or an MNIST IDX image file)");
        let m = idx_labels(Path::new("/dev/zero")).unwrap_err().0;
        assert!(m.contains("is not an IDX label file"), "{m}");
        let dir = std::env::temp_dir().join(format!("cnnc-input-{}-fifo", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            // The writer sends a valid header for one 4×4 image, then never stops.
            let writer_path = fifo.clone();
            let writer = std::thread::spawn(move || {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&writer_path)
                    .unwrap();
                let mut sent = 0usize;
                let head = idx(1, 4, 4, 16);
                if f.write_all(&head).is_err() {
                    return sent;
                }
                // Stops only when the reader closes the pipe (EPIPE; Rust ignores SIGPIPE).
                while f.write_all(&[1u8; 4096]).is_ok() {
                    sent += 4096;
                }
                sent
            });
            let m = load(std::slice::from_ref(&fifo), [1, 4, 4], &options)
                .unwrap_err()
                .0;
            assert!(
                m.contains(
                    "the IDX header promises 1 images of 4×4 but the file has 17 bytes of pixels"
                ),
                "{m}"
            );
            let sent = writer.join().unwrap();
            assert!(
                sent < 1 << 20,
                "the reader took {sent} bytes from an endless FIFO"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

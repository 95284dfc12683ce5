//! PyTorch weights in safetensors files: `safetensors.torch.save_file(model.state_dict(), path)`.
//!
//! Floating-point tensors (f32, f16, bf16, f64) are read into f32 or f64;
//! integer tensors (`num_batches_tracked` is int64) are kept as integers so a
//! strict loader can tell a buffer from a parameter. Pickled `.pt` files are
//! never read: unpickling runs arbitrary code.

use crate::{shape_text, Error, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::BTreeMap;
use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

/// The values of one tensor, widened where that is exact.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
}

impl Data {
    /// Every value as f64 (exact for all the stored types short of huge i64).
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            Data::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::F64(v) => v.clone(),
            Data::I64(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }

    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Data::F32(v) => v.clone(),
            Data::F64(v) => v.iter().map(|&x| x as f32).collect(),
            Data::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    pub fn is_float(&self) -> bool {
        !matches!(self, Data::I64(_))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WeightTensor {
    /// The dtype as stored in the file, e.g. `F16`.
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: Data,
}

/// All tensors of one safetensors file, by key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WeightFile {
    pub tensors: BTreeMap<String, WeightTensor>,
}

/// How to make a pickled PyTorch checkpoint into something cnnc reads.
pub const CONVERT_HELP: &str = "cnnc reads safetensors, not pickled PyTorch files (unpickling can run arbitrary code); convert once with:\n    python3 -c \"import torch, safetensors.torch as st; st.save_file(torch.load('model.pt', map_location='cpu', weights_only=True), 'model.safetensors')\"";

/// Largest safetensors header accepted (the safetensors crate's own limit).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

impl WeightFile {
    /// Reads a safetensors file into memory and checks it (see [`WeightFile::read_from`]).
    pub fn load(path: &Path) -> Result<WeightFile> {
        let display = path.display();
        let meta =
            std::fs::metadata(path).map_err(|e| Error(format!("cannot read `{display}`: {e}")))?;
        if meta.is_dir() {
            return Err(Error(format!(
                "`{display}` is a directory, not a safetensors file"
            )));
        }
        let file = std::fs::File::open(path)
            .map_err(|e| Error(format!("cannot read `{display}`: {e}")))?;
        // Only a regular file has a trustworthy length; FIFOs and devices report 0.
        let len = meta.is_file().then_some(meta.len());
        WeightFile::read_from(file, len).map_err(|Error(m)| Error(format!("`{display}`: {m}")))
    }

    /// Reads a safetensors stream: the 8-byte header length, the JSON header,
    /// then exactly the bytes the header describes.
    ///
    /// The file is read into memory, never memory-mapped, so a file truncated
    /// by someone else while it is read gives an error rather than SIGBUS.
    /// Nothing is read beyond what the header declares (plus one byte to
    /// detect trailing data), so a FIFO or a device cannot make it read
    /// forever. `file_len`, when known, lets a wrong length fail before any
    /// tensor data is read.
    pub fn read_from(reader: impl Read, file_len: Option<u64>) -> Result<WeightFile> {
        let mut reader = reader;
        let mut bytes = Vec::new();
        read_up_to(&mut reader, &mut bytes, 8)?;
        let is_pickle = bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(&[0x80, 0x02]);
        let pickled = |message: String| {
            if is_pickle {
                Error(format!(
                    "this is a pickled PyTorch checkpoint, not safetensors.\n{CONVERT_HELP}"
                ))
            } else {
                Error(message)
            }
        };
        if bytes.len() < 8 {
            return Err(pickled(format!(
                "not a safetensors file: it is {} bytes long, shorter than the 8-byte header length that starts every safetensors file",
                bytes.len()
            )));
        }
        let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        // Eight bytes of text read as a length give a meaningless number
        // (a notes file: "the header length 734942374227151408"); say what it is.
        let text = bytes[..8]
            .iter()
            .all(|&b| b.is_ascii_graphic() || b.is_ascii_whitespace());
        if header_len > MAX_HEADER_BYTES && text && !is_pickle {
            return Err(Error(
                "not a safetensors file: it starts with text, and a safetensors file starts with an 8-byte binary header length (save the weights with safetensors.torch.save_file)".to_string(),
            ));
        }
        if header_len > MAX_HEADER_BYTES {
            return Err(pickled(format!(
                "not a safetensors file: the header length {header_len} is over the {MAX_HEADER_BYTES}-byte limit"
            )));
        }
        if let Some(len) = file_len {
            if 8 + header_len > len {
                return Err(pickled(format!(
                    "not a safetensors file: the header length {header_len} runs past the end of the file ({len} bytes)"
                )));
            }
        }
        read_up_to(&mut reader, &mut bytes, 8 + header_len as usize)?;
        if bytes.len() < 8 + header_len as usize {
            return Err(pickled(format!(
                "the file ends inside the safetensors header ({} of {header_len} header bytes; truncated?)",
                bytes.len() - 8
            )));
        }
        let data_len = check_header(&bytes[8..]).map_err(pickled)?;
        let total = (8 + header_len)
            .checked_add(data_len)
            .ok_or_else(|| Error("the header's data offsets overflow".to_string()))?;
        let describe = |len: u64| {
            if len < total {
                format!(
                    "the header describes {data_len} bytes of tensor data, but the file has only {} (truncated?)",
                    len - 8 - header_len
                )
            } else {
                format!(
                    "the header describes {data_len} bytes of tensor data, but {} more bytes follow them (trailing data)",
                    len - total
                )
            }
        };
        if let Some(len) = file_len {
            if len != total {
                return Err(Error(describe(len)));
            }
        }
        // One byte past the declared end tells trailing data apart.
        read_up_to(&mut reader, &mut bytes, total as usize + 1)?;
        if bytes.len() as u64 != total {
            return Err(Error(describe(bytes.len() as u64)));
        }
        WeightFile::parse(&bytes)
    }

    /// Parses a whole safetensors file held in memory, with the checks of
    /// [`WeightFile::read_from`].
    pub fn from_bytes(bytes: &[u8]) -> Result<WeightFile> {
        WeightFile::read_from(bytes, Some(bytes.len() as u64))
    }

    /// Decodes a file whose length and header [`check_header`] accepted.
    fn parse(bytes: &[u8]) -> Result<WeightFile> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| Error(format!("not a valid safetensors file: {e}")))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.iter() {
            let data = decode(&view).map_err(|m| Error(format!("tensor `{name}`: {m}")))?;
            tensors.insert(
                name.to_string(),
                WeightTensor {
                    dtype: format!("{:?}", view.dtype()),
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        Ok(WeightFile { tensors })
    }

    /// Tensors holding NaN or infinite values: (key, NaN count, infinity count).
    pub fn non_finite(&self) -> Vec<(String, usize, usize)> {
        let mut found = Vec::new();
        for (name, t) in &self.tensors {
            let (nan, inf) = match &t.data {
                Data::F32(v) => count_non_finite(v.iter().map(|&x| x as f64)),
                Data::F64(v) => count_non_finite(v.iter().copied()),
                Data::I64(_) => (0, 0),
            };
            if nan + inf > 0 {
                found.push((name.clone(), nan, inf));
            }
        }
        found
    }

    /// Checks that every weight is finite. NaN or infinite weights are an
    /// error when `strict`, otherwise the returned text is a warning to print
    /// (PyTorch loads such weights silently; the outputs will hold NaN).
    pub fn check_finite(&self, strict: bool) -> Result<Option<String>> {
        let found = self.non_finite();
        if found.is_empty() {
            return Ok(None);
        }
        let mut parts: Vec<String> = found
            .iter()
            .take(5)
            .map(|(name, nan, inf)| format!("`{name}` ({nan} NaN, {inf} infinite)"))
            .collect();
        if found.len() > 5 {
            parts.push(format!("and {} more tensors", found.len() - 5));
        }
        let text = format!("weights are not all finite: {}", parts.join(", "));
        if strict {
            Err(Error(text))
        } else {
            Ok(Some(text))
        }
    }

    /// Serialises f32 tensors and int64 scalars, as PyTorch's state_dict would hold them.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, t) in &self.tensors {
            let (dtype, bytes) = match &t.data {
                Data::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                Data::F64(v) => (Dtype::F64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                Data::I64(v) => (
                    Dtype::I64,
                    v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
                ),
            };
            buffers.push((name.clone(), dtype, t.shape.clone(), bytes));
        }
        let mut views = Vec::new();
        for (name, dtype, shape, bytes) in &buffers {
            let view = TensorView::new(*dtype, shape.clone(), bytes)
                .map_err(|e| Error(format!("tensor `{name}`: {e}")))?;
            views.push((name.clone(), view));
        }
        safetensors::tensor::serialize(views, None)
            .map_err(|e| Error(format!("cannot encode safetensors: {e}")))
    }
}

fn decode(view: &TensorView) -> std::result::Result<Data, String> {
    let bytes = view.data();
    let chunks = |n: usize| bytes.chunks_exact(n);
    Ok(match view.dtype() {
        Dtype::F32 => Data::F32(
            chunks(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Dtype::F64 => Data::F64(
            chunks(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
        Dtype::F16 => Data::F32(
            chunks(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        Dtype::BF16 => Data::F32(
            chunks(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        Dtype::I64 => Data::I64(
            chunks(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
        Dtype::I32 => Data::I64(
            chunks(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
        ),
        other => {
            return Err(format!(
                "dtype {other:?} is not supported (use f32, f16, bf16 or f64)"
            ))
        }
    })
}

impl WeightTensor {
    pub fn describe(&self) -> String {
        format!("{} {}", self.dtype, shape_text(&self.shape))
    }
}

fn count_non_finite(values: impl Iterator<Item = f64>) -> (usize, usize) {
    values.fold((0, 0), |(nan, inf), v| {
        (nan + v.is_nan() as usize, inf + v.is_infinite() as usize)
    })
}

/// Appends bytes from `reader` until `bytes` holds `limit` bytes or the stream ends.
fn read_up_to(reader: &mut impl Read, bytes: &mut Vec<u8>, limit: usize) -> Result<()> {
    let want = limit.saturating_sub(bytes.len()) as u64;
    reader
        .take(want)
        .read_to_end(bytes)
        .map_err(|e| Error(format!("cannot read: {e}")))?;
    Ok(())
}

/// One entry of a safetensors header, as written.
#[derive(serde::Deserialize)]
struct RawInfo {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// The keys of a JSON object in file order, with their values, so duplicate keys can be seen.
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// Checks a safetensors JSON header and returns the length of the tensor data
/// it describes. The safetensors crate checks most of this too, but silently
/// keeps the last of duplicate keys and gives terse messages; these name the
/// tensor and the numbers.
fn check_header(header: &[u8]) -> std::result::Result<u64, String> {
    let text = std::str::from_utf8(header)
        .map_err(|e| format!("not a safetensors file: the header is not UTF-8 ({e})"))?;
    let Entries(entries) = serde_json::from_str(text)
        .map_err(|e| format!("not a safetensors file: the header is not a JSON object ({e})"))?;
    let mut seen = HashSet::new();
    let mut infos = Vec::new();
    for (key, value) in entries {
        if !seen.insert(key.clone()) {
            return Err(format!("the header names tensor `{key}` twice"));
        }
        if key == "__metadata__" {
            continue;
        }
        let info: RawInfo = serde_json::from_value(value)
            .map_err(|e| format!("tensor `{key}`: malformed header entry ({e})"))?;
        let dtype: Dtype = serde_json::from_value(serde_json::Value::String(info.dtype.clone()))
            .map_err(|_| format!("tensor `{key}`: unknown dtype `{}`", info.dtype))?;
        let (start, end) = info.data_offsets;
        if end < start {
            return Err(format!(
                "tensor `{key}`: data_offsets [{start}, {end}] end before they start"
            ));
        }
        let bits = info
            .shape
            .iter()
            .try_fold(dtype.bitsize() as u64, |acc, &d| acc.checked_mul(d));
        let expected = match bits {
            Some(b) if b % 8 == 0 => b / 8,
            Some(_) => {
                return Err(format!(
                    "tensor `{key}`: its elements do not fill whole bytes"
                ))
            }
            None => {
                return Err(format!(
                    "tensor `{key}`: shape {:?} of {} overflows a 64-bit byte count",
                    info.shape, info.dtype
                ))
            }
        };
        if end - start != expected {
            return Err(format!(
                "tensor `{key}`: shape {:?} of {} needs {expected} bytes, but data_offsets [{start}, {end}] hold {}",
                info.shape,
                info.dtype,
                end - start
            ));
        }
        infos.push((start, end, key));
    }
    infos.sort();
    let mut position = 0u64;
    let mut previous: Option<&str> = None;
    for (start, end, key) in &infos {
        if *start != position {
            let what = if *start < position {
                "overlaps"
            } else {
                "leaves a gap after"
            };
            return Err(format!(
                "tensor `{key}`: data_offsets [{start}, {end}] {what} {} (which ends at byte {position})",
                previous.map_or("the start of the data".to_string(), |p| format!("tensor `{p}`"))
            ));
        }
        position = *end;
        previous = Some(key);
    }
    Ok(position)
}

/// The weights rows of docs/reliability.md: every malformed safetensors file
/// gets an error naming the problem, never a panic or an unbounded read.
#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file with this header text and data.
    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    fn error(bytes: &[u8]) -> String {
        match WeightFile::from_bytes(bytes) {
            Ok(w) => panic!("accepted: {w:?}"),
            Err(Error(m)) => m,
        }
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("cnnc-weights-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const ONE: &str = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;

    #[test]
    fn valid_file_loads() {
        let w = WeightFile::from_bytes(&file(ONE, &[0; 8])).unwrap();
        assert_eq!(w.tensors["w"].data, Data::F32(vec![0.0, 0.0]));
    }

    #[test]
    fn shorter_than_eight_bytes() {
        for n in 0..8 {
            let m = error(&vec![1u8; n]);
            assert!(
                m.contains(&format!(
                    "it is {n} bytes long, shorter than the 8-byte header length"
                )),
                "{m}"
            );
        }
    }

    #[test]
    fn a_text_file_is_not_read_as_a_header_length() {
        let m = error(b"these are my notes about the model\n");
        assert!(
            m.starts_with("not a safetensors file: it starts with text"),
            "{m}"
        );
        assert!(!m.contains("header length 7"), "{m}");
    }

    #[test]
    fn header_length_past_the_end_or_too_large() {
        let mut bytes = file(ONE, &[0; 8]);
        bytes[..8].copy_from_slice(&1000u64.to_le_bytes());
        let m = error(&bytes);
        assert!(
            m.contains("the header length 1000 runs past the end of the file (70 bytes)"),
            "{m}"
        );
        for huge in [100_000_001u64, u64::MAX] {
            bytes[..8].copy_from_slice(&huge.to_le_bytes());
            let m = error(&bytes);
            assert!(
                m.contains(&format!(
                    "the header length {huge} is over the 100000000-byte limit"
                )),
                "{m}"
            );
        }
        // A stream whose length is unknown is cut short inside the header.
        bytes[..8].copy_from_slice(&1000u64.to_le_bytes());
        let m = WeightFile::read_from(&bytes[..], None).unwrap_err().0;
        assert!(
            m.contains(
                "the file ends inside the safetensors header (62 of 1000 header bytes; truncated?)"
            ),
            "{m}"
        );
    }

    #[test]
    fn header_not_json() {
        for header in ["not json at all", "[1, 2]", "{\"w\": ", "\u{0}\u{0}"] {
            let m = error(&file(header, &[]));
            assert!(
                m.contains("the header is not a JSON object"),
                "{header}: {m}"
            );
        }
        let mut bytes = file("{}", &[]);
        bytes[8] = 0xff;
        assert!(error(&bytes).contains("the header is not UTF-8"));
        let m = error(&file(
            r#"{"w":{"dtype":"F32","shape":"two","data_offsets":[0,8]}}"#,
            &[0; 8],
        ));
        assert!(m.contains("tensor `w`: malformed header entry"), "{m}");
    }

    #[test]
    fn duplicate_keys() {
        // serde_json (and so the safetensors crate) would keep the second `w` silently.
        let header = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        assert_eq!(
            error(&file(header, &[0; 8])),
            "the header names tensor `w` twice"
        );
    }

    #[test]
    fn overlapping_and_gapped_offsets() {
        let overlap = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
        assert_eq!(
            error(&file(overlap, &[0; 12])),
            "tensor `b`: data_offsets [4, 12] overlaps tensor `a` (which ends at byte 8)"
        );
        let gap = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}}"#;
        assert_eq!(
            error(&file(gap, &[0; 20])),
            "tensor `b`: data_offsets [12, 20] leaves a gap after tensor `a` (which ends at byte 8)"
        );
        let late = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
        assert!(error(&file(late, &[0; 12])).contains("leaves a gap after the start of the data"));
        let backwards = r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}"#;
        assert!(error(&file(backwards, &[0; 8])).contains("end before they start"));
    }

    #[test]
    fn byte_length_differs_from_shape_times_dtype() {
        let short = r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
        assert_eq!(
            error(&file(short, &[0; 8])),
            "tensor `a`: shape [3] of F32 needs 12 bytes, but data_offsets [0, 8] hold 8"
        );
        // 2^62 elements of 4 bytes overflow 64 bits; no allocation is attempted.
        let overflow =
            r#"{"a":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,8]}}"#;
        assert_eq!(
            error(&file(overflow, &[0; 8])),
            "tensor `a`: shape [4611686018427387904] of F32 overflows a 64-bit byte count"
        );
        let product =
            r#"{"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#;
        assert!(error(&file(product, &[0; 8])).contains("overflows a 64-bit byte count"));
        // Offsets that claim far more data than the file has.
        let far =
            r#"{"a":{"dtype":"U8","shape":[1000000000000],"data_offsets":[0,1000000000000]}}"#;
        let m = error(&file(far, &[0; 8]));
        assert!(m.contains("the header describes 1000000000000 bytes of tensor data, but the file has only 8 (truncated?)"), "{m}");
    }

    #[test]
    fn trailing_bytes() {
        let m = error(&file(ONE, &[0; 11]));
        assert_eq!(m, "the header describes 8 bytes of tensor data, but 3 more bytes follow them (trailing data)");
        let m = WeightFile::read_from(&file(ONE, &[0; 9])[..], None)
            .unwrap_err()
            .0;
        assert!(m.contains("1 more bytes follow them"), "{m}");
    }

    #[test]
    fn unsupported_and_unknown_dtypes() {
        let u8s = r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#;
        assert_eq!(
            error(&file(u8s, &[0; 2])),
            "tensor `a`: dtype U8 is not supported (use f32, f16, bf16 or f64)"
        );
        let unknown = r#"{"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,2]}}"#;
        assert_eq!(
            error(&file(unknown, &[0; 2])),
            "tensor `a`: unknown dtype `Q7`"
        );
        let nibbles = r#"{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}"#;
        assert_eq!(
            error(&file(nibbles, &[0; 2])),
            "tensor `a`: its elements do not fill whole bytes"
        );
    }

    #[test]
    fn nan_and_infinity_warn_or_fail() {
        let mut data = Vec::new();
        for v in [f32::NAN, f32::INFINITY, -f32::INFINITY, 1.0] {
            data.extend(v.to_le_bytes());
        }
        let header = r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"ok":{"dtype":"F32","shape":[2],"data_offsets":[16,24]}}"#;
        data.extend([0u8; 8]);
        let w = WeightFile::from_bytes(&file(header, &data)).unwrap();
        assert_eq!(w.non_finite(), vec![("w".to_string(), 1, 2)]);
        let warning = w.check_finite(false).unwrap().unwrap();
        assert_eq!(
            warning,
            "weights are not all finite: `w` (1 NaN, 2 infinite)"
        );
        assert_eq!(w.check_finite(true).unwrap_err().0, warning);
        let clean = WeightFile::from_bytes(&file(ONE, &[0; 8])).unwrap();
        assert_eq!(clean.check_finite(true), Ok(None));
    }

    #[test]
    fn pickles_get_the_conversion_command() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/reliability");
        for name in ["model.pt", "legacy.pt"] {
            let m = WeightFile::load(&dir.join(name)).unwrap_err().0;
            assert!(
                m.contains("this is a pickled PyTorch checkpoint, not safetensors"),
                "{name}: {m}"
            );
            assert!(
                m.contains(
                    "st.save_file(torch.load('model.pt', map_location='cpu', weights_only=True)"
                ),
                "{m}"
            );
        }
    }

    /// The file is read, not memory-mapped: shrinking it while it is open
    /// gives an error. (With mmap, touching the lost pages raises SIGBUS.)
    #[test]
    fn file_truncated_after_open() {
        let dir = scratch("truncated");
        let path = dir.join("w.safetensors");
        let mut data = vec![0u8; 4096];
        data[0] = 1;
        let header = r#"{"w":{"dtype":"F32","shape":[1024],"data_offsets":[0,4096]}}"#;
        std::fs::write(&path, file(header, &data)).unwrap();
        let full_len = std::fs::metadata(&path).unwrap().len();
        let opened = std::fs::File::open(&path).unwrap();
        // Someone else truncates it after we opened it and took its length.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(100)
            .unwrap();
        let m = WeightFile::read_from(opened, Some(full_len)).unwrap_err().0;
        assert!(m.contains("the header describes 4096 bytes of tensor data, but the file has only 32 (truncated?)"), "{m}");
        // And truncated inside the header.
        let opened = std::fs::File::open(&path).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(20)
            .unwrap();
        let m = WeightFile::read_from(opened, Some(full_len)).unwrap_err().0;
        assert!(
            m.contains("the file ends inside the safetensors header"),
            "{m}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn directories_devices_and_fifos() {
        let dir = scratch("special");
        let m = WeightFile::load(&dir).unwrap_err().0;
        assert!(m.ends_with("is a directory, not a safetensors file"), "{m}");
        // /dev/zero: the header length is 0, so the (empty) header is not JSON; nothing more is read.
        let m = WeightFile::load(Path::new("/dev/zero")).unwrap_err().0;
        assert!(
            m.contains("`/dev/zero`: not a safetensors file: the header is not a JSON object"),
            "{m}"
        );
        // A FIFO is read up to what its header declares.
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let writer_path = fifo.clone();
            let writer = std::thread::spawn(move || {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&writer_path)
                    .unwrap();
                let _ = f.write_all(&file(ONE, &[0; 8]));
            });
            let w = WeightFile::load(&fifo).unwrap();
            assert_eq!(w.tensors.len(), 1);
            writer.join().unwrap();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! A validated reader of IDX files (the MNIST format), plain or gzipped.
//!
//! An IDX file is a 4-byte magic number — two zero bytes, a type code
//! (`0x08` = unsigned bytes, the only type MNIST uses) and the number of
//! dimensions — then each dimension as a big-endian `u32`, then the values in
//! row-major order. MNIST publishes its files gzipped
//! (`train-images-idx3-ubyte.gz`); a file starting with the gzip magic
//! `1f 8b` is decompressed first, whatever its name.
//!
//! Every way a file can be wrong is an error naming the file and what was
//! expected: a bad magic, a type other than `u8`, a dimension of zero, sizes
//! that overflow, a header that promises more (or fewer) values than the file
//! has, a truncated gzip stream.

use crate::{Error, Result};
use std::io::Read;
use std::path::Path;

/// Largest decompressed IDX file accepted (full MNIST is 47 MB).
pub const MAX_IDX_BYTES: u64 = 4 << 30;

/// An IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// A set of greyscale images: `n` images of `rows × cols` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    pub n: usize,
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
}

impl IdxImages {
    /// The bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let per = self.rows * self.cols;
        &self.pixels[i * per..(i + 1) * per]
    }
}

/// Reads an IDX file, gunzipping it if it starts with the gzip magic.
///
/// Bounded: the header is read first, and then only the values it promises
/// (plus one byte, so that trailing bytes are reported), never more than
/// [`MAX_IDX_BYTES`]; `/dev/zero` or a FIFO cannot make it read forever.
/// [`parse`] then checks the bytes.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    use std::io::BufRead;
    let display = path.display().to_string();
    let meta =
        std::fs::metadata(path).map_err(|e| Error(format!("cannot read `{display}`: {e}")))?;
    if meta.is_dir() {
        return Err(Error(format!(
            "`{display}` is a directory, not an IDX file"
        )));
    }
    let file =
        std::fs::File::open(path).map_err(|e| Error(format!("cannot read `{display}`: {e}")))?;
    let mut buffered = std::io::BufReader::new(file);
    let gz = buffered
        .fill_buf()
        .map_err(|e| Error(format!("cannot read `{display}`: {e}")))?
        .starts_with(&[0x1f, 0x8b]);
    if gz {
        read_bounded(flate2::read::MultiGzDecoder::new(buffered), &display, |e| {
            Error(format!(
                "`{display}`: the gzip stream is damaged or truncated ({e})"
            ))
        })
    } else {
        read_bounded(buffered, &display, |e| {
            Error(format!("cannot read `{display}`: {e}"))
        })
    }
}

/// The header, then at most the values it promises plus one byte.
fn read_bounded(
    mut r: impl Read,
    name: &str,
    io: impl Fn(std::io::Error) -> Error,
) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    (&mut r).take(4).read_to_end(&mut bytes).map_err(&io)?;
    // Anything but a u8 IDX magic: parse() names what is wrong.
    if bytes.len() < 4 || bytes[..3] != [0, 0, 0x08] {
        return Ok(bytes);
    }
    let rank = bytes[3] as u64;
    (&mut r)
        .take(4 * rank)
        .read_to_end(&mut bytes)
        .map_err(&io)?;
    if (bytes.len() as u64) < 4 + 4 * rank {
        return Ok(bytes);
    }
    let count = bytes[4..]
        .chunks(4)
        .try_fold(1u64, |n, d| {
            n.checked_mul(u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as u64)
        })
        .filter(|&n| n <= MAX_IDX_BYTES)
        .ok_or_else(|| {
            Error(format!(
                "`{name}`: the IDX header promises more than {MAX_IDX_BYTES} values, the most this reader accepts"
            ))
        })?;
    r.take(count + 1).read_to_end(&mut bytes).map_err(&io)?;
    Ok(bytes)
}

/// Parses IDX bytes; `name` is used in error messages.
pub fn parse(bytes: &[u8], name: &str) -> Result<IdxArray> {
    let err = |m: String| Error(format!("`{name}`: {m}"));
    if bytes.len() < 4 {
        return Err(err(format!(
            "{} bytes is too short for an IDX file (the magic number alone is 4)",
            bytes.len()
        )));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(err(format!(
            "not an IDX file: the magic number is {:02x} {:02x} {:02x} {:02x}, expected 00 00 08 <dims> (2051 for images, 2049 for labels)",
            bytes[0], bytes[1], bytes[2], bytes[3]
        )));
    }
    if bytes[2] != 0x08 {
        return Err(err(format!(
            "IDX type code {:#04x} is not supported; only unsigned bytes (0x08) are",
            bytes[2]
        )));
    }
    let rank = bytes[3] as usize;
    if rank == 0 {
        return Err(err("the IDX header declares zero dimensions".into()));
    }
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(err(format!(
            "the IDX header is truncated: {rank} dimensions need {header} bytes, the file has {}",
            bytes.len()
        )));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| {
            let at = 4 + 4 * i;
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize
        })
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| err(format!("the dimensions {dims:?} overflow")))?;
    let have = bytes.len() - header;
    if have < count {
        return Err(err(format!(
            "truncated: the header promises {count} values ({}), the file has {have}",
            dims_text(&dims)
        )));
    }
    if have > count {
        return Err(err(format!(
            "{} bytes after the {count} values the header promises ({}); is the header wrong?",
            have - count,
            dims_text(&dims)
        )));
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

fn dims_text(dims: &[usize]) -> String {
    dims.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("×")
}

/// Reads any u8 IDX file (plain or gzipped).
pub fn read(path: &Path) -> Result<IdxArray> {
    parse(&read_bytes(path)?, &path.display().to_string())
}

/// Reads an image file: magic 2051 (`00 00 08 03`), dims `[n, rows, cols]`.
pub fn read_images(path: &Path) -> Result<IdxImages> {
    let a = read(path)?;
    images_from(a, &path.display().to_string())
}

fn images_from(a: IdxArray, name: &str) -> Result<IdxImages> {
    if a.dims.len() != 3 {
        return Err(Error(format!(
            "`{name}`: an IDX image file has 3 dimensions (magic 2051), this one has {} ({}); is it a label file?",
            a.dims.len(),
            dims_text(&a.dims)
        )));
    }
    let (n, rows, cols) = (a.dims[0], a.dims[1], a.dims[2]);
    if n == 0 || rows == 0 || cols == 0 {
        return Err(Error(format!(
            "`{name}`: the file holds no images ({})",
            dims_text(&a.dims)
        )));
    }
    Ok(IdxImages {
        n,
        rows,
        cols,
        pixels: a.data,
    })
}

/// Reads a label file: magic 2049 (`00 00 08 01`), dims `[n]`.
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    let a = read(path)?;
    let name = path.display();
    if a.dims.len() != 1 {
        return Err(Error(format!(
            "`{name}`: an IDX label file has 1 dimension (magic 2049), this one has {} ({}); is it an image file?",
            a.dims.len(),
            dims_text(&a.dims)
        )));
    }
    Ok(a.data)
}

/// Reads images and their labels, checking that the counts agree.
pub fn read_labelled(images: &Path, labels: &Path) -> Result<(IdxImages, Vec<u8>)> {
    let im = read_images(images)?;
    let lb = read_labels(labels)?;
    if im.n != lb.len() {
        return Err(Error(format!(
            "`{}` has {} images but `{}` has {} labels; they must match one to one",
            images.display(),
            im.n,
            labels.display(),
            lb.len()
        )));
    }
    Ok((im, lb))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(n: u32, r: u32, c: u32, extra: isize) -> Vec<u8> {
        let mut b = vec![0, 0, 8, 3];
        for d in [n, r, c] {
            b.extend(d.to_be_bytes());
        }
        let len = (n * r * c) as isize + extra;
        b.extend((0..len).map(|i| i as u8));
        b
    }

    /// Endless or huge inputs are refused after reading the header, not after
    /// reading gigabytes: /dev/zero has a zero type code, and a header that
    /// promises 2^32 × 2^32 values is refused before any value is read.
    #[test]
    fn reads_are_bounded_by_the_header() {
        let e = read(Path::new("/dev/zero")).unwrap_err().0;
        assert!(e.contains("type code 0x00"), "{e}");
        let dir = std::env::temp_dir().join(format!("cnnc-idx-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let huge = dir.join("huge.idx");
        let mut b = vec![0, 0, 8, 2];
        b.extend(u32::MAX.to_be_bytes());
        b.extend(u32::MAX.to_be_bytes());
        std::fs::write(&huge, &b).unwrap();
        let e = read(&huge).unwrap_err().0;
        assert!(e.contains("promises more than"), "{e}");
        let trailing = dir.join("trailing.idx");
        std::fs::write(&trailing, images(2, 3, 4, 1000)).unwrap();
        let e = read(&trailing).unwrap_err().0;
        assert!(e.contains("1 bytes after"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parses_and_rejects() {
        let a = parse(&images(2, 3, 4, 0), "x").unwrap();
        assert_eq!(a.dims, vec![2, 3, 4]);
        assert_eq!(a.data.len(), 24);
        let e = parse(&images(2, 3, 4, -1), "x").unwrap_err().0;
        assert!(e.contains("truncated") && e.contains("24"), "{e}");
        let e = parse(&images(2, 3, 4, 5), "x").unwrap_err().0;
        assert!(e.contains("5 bytes after"), "{e}");
        let mut bad = images(1, 1, 1, 0);
        bad[0] = 0x50;
        let e = parse(&bad, "x").unwrap_err().0;
        assert!(e.contains("magic"), "{e}");
        bad = images(1, 1, 1, 0);
        bad[2] = 0x0d;
        assert!(parse(&bad, "x").unwrap_err().0.contains("type code"));
        let e = parse(&images(1, 1, 1, 0)[..9], "x").unwrap_err().0;
        assert!(e.contains("header is truncated"), "{e}");
        let huge = {
            let mut b = vec![0, 0, 8, 3];
            for d in [u32::MAX, u32::MAX, u32::MAX] {
                b.extend(d.to_be_bytes());
            }
            b
        };
        assert!(parse(&huge, "x").is_err());
    }

    #[test]
    fn gzip_and_pairs() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("cnnc-idx-gzip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let raw = images(3, 2, 2, 0);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&raw).unwrap();
        let gz = gz.finish().unwrap();
        let ip = dir.join("i.gz");
        std::fs::write(&ip, &gz).unwrap();
        let im = read_images(&ip).unwrap();
        assert_eq!((im.n, im.rows, im.cols), (3, 2, 2));
        assert_eq!(im.image(1), &[4, 5, 6, 7]);
        std::fs::write(&ip, &gz[..gz.len() - 10]).unwrap();
        let e = read_images(&ip).unwrap_err().0;
        assert!(e.contains("gzip"), "{e}");
        std::fs::write(&ip, &raw).unwrap();
        let lp = dir.join("l");
        std::fs::write(&lp, [0, 0, 8, 1, 0, 0, 0, 2, 1, 2]).unwrap();
        let e = read_labelled(&ip, &lp).unwrap_err().0;
        assert!(e.contains("3 images") && e.contains("2 labels"), "{e}");
        let e = read_labels(&ip).unwrap_err().0;
        assert!(e.contains("image file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

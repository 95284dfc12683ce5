//! Training data: MNIST-style IDX files (plain or gzipped), checked against
//! the model before any training starts.
//!
//! `--data` may name
//! - a directory with the official MNIST files (`train-images-idx3-ubyte`,
//!   `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
//!   `t10k-labels-idx1-ubyte`, each optionally `.gz`): train on the 60,000,
//!   evaluate on the 10,000;
//! - a directory with `mnist-10k-images.idx.gz` and `mnist-10k-labels.idx.gz`
//!   (the bundled `models/data`): the first `holdout` (default 2000) are held
//!   out, the rest (8000) train;
//! - an image file, its labels in the same directory with `images` replaced
//!   by `labels` in the name (and `-idx3-` by `-idx1-`, as MNIST names
//!   them): the first `holdout` (default a fifth) are held out.

use cnnc_runtime::idx::{self, IdxImages};
use std::path::{Path, PathBuf};

/// Images as f32 (pixel/255, zero-padded), with labels.
pub struct Dataset {
    pub n: usize,
    /// Values per image.
    pub per: usize,
    pub images: Vec<f32>,
    pub labels: Vec<u8>,
}

impl Dataset {
    /// Copies images `order[range]` into a batch.
    pub fn gather(&self, order: &[usize], x: &mut Vec<f32>, y: &mut Vec<u8>) {
        x.clear();
        y.clear();
        for &i in order {
            x.extend_from_slice(&self.images[i * self.per..(i + 1) * self.per]);
            y.push(self.labels[i]);
        }
    }
}

pub struct Split {
    pub train: Dataset,
    pub test: Dataset,
    /// One line saying where the data came from and how it was split.
    pub description: String,
}

fn with_gz(dir: &Path, name: &str) -> Option<PathBuf> {
    [name.to_string(), format!("{name}.gz")]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

fn to_dataset(
    im: &IdxImages,
    labels: Vec<u8>,
    range: std::ops::Range<usize>,
    chw: [usize; 3],
    pad: usize,
) -> Dataset {
    let (h, w) = (chw[1], chw[2]);
    let per = h * w;
    let n = range.len();
    let mut images = vec![0f32; n * per];
    for (k, i) in range.clone().enumerate() {
        let src = im.image(i);
        for r in 0..im.rows {
            for c in 0..im.cols {
                images[k * per + (r + pad) * w + c + pad] = src[r * im.cols + c] as f32 / 255.0;
            }
        }
    }
    Dataset {
        n,
        per,
        images,
        labels: labels[range].to_vec(),
    }
}

fn check_fit(im: &IdxImages, path: &Path, chw: [usize; 3], pad: usize) -> Result<(), String> {
    if chw[0] != 1 {
        return Err(format!(
            "`{}` holds greyscale images, but the model takes {} channels",
            path.display(),
            chw[0]
        ));
    }
    let (h, w) = (im.rows + 2 * pad, im.cols + 2 * pad);
    if (h, w) != (chw[1], chw[2]) {
        let hint = if chw[1] > im.rows
            && chw[1] - im.rows == chw[2].saturating_sub(im.cols)
            && (chw[1] - im.rows).is_multiple_of(2)
        {
            format!(
                "; pass `--pad {}` to pad them with zeros",
                (chw[1] - im.rows) / 2
            )
        } else {
            String::new()
        };
        return Err(format!(
            "`{}` holds {}×{} images{}, but the model takes {}×{}{hint}",
            path.display(),
            im.rows,
            im.cols,
            if pad > 0 {
                format!(" ({h}×{w} padded)")
            } else {
                String::new()
            },
            chw[1],
            chw[2]
        ));
    }
    Ok(())
}

fn check_labels(labels: &[u8], path: &Path, classes: usize) -> Result<(), String> {
    if let Some((i, &l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= classes)
    {
        return Err(format!(
            "`{}`: label {l} at index {i} is not a class of the model, which has {classes} outputs",
            path.display()
        ));
    }
    Ok(())
}

fn load_pair(
    images: &Path,
    labels: &Path,
    chw: [usize; 3],
    pad: usize,
    classes: usize,
) -> Result<(IdxImages, Vec<u8>), String> {
    let (im, lb) = idx::read_labelled(images, labels).map_err(|e| e.0)?;
    check_fit(&im, images, chw, pad)?;
    check_labels(&lb, labels, classes)?;
    Ok((im, lb))
}

/// Loads and checks the data for a model with input `chw` and `classes` outputs.
pub fn load(
    data: &Path,
    holdout: Option<usize>,
    pad: usize,
    chw: [usize; 3],
    classes: usize,
) -> Result<Split, String> {
    if data.is_dir() {
        if let (Some(ti), Some(tl), Some(ei), Some(el)) = (
            with_gz(data, "train-images-idx3-ubyte"),
            with_gz(data, "train-labels-idx1-ubyte"),
            with_gz(data, "t10k-images-idx3-ubyte"),
            with_gz(data, "t10k-labels-idx1-ubyte"),
        ) {
            let (tim, tlb) = load_pair(&ti, &tl, chw, pad, classes)?;
            let (eim, elb) = load_pair(&ei, &el, chw, pad, classes)?;
            let (tn, en) = (tim.n, eim.n);
            return Ok(Split {
                train: to_dataset(&tim, tlb, 0..tn, chw, pad),
                test: to_dataset(&eim, elb, 0..en, chw, pad),
                description: format!(
                    "{}: {tn} training images ({}), {en} test images ({})",
                    data.display(),
                    ti.display(),
                    ei.display()
                ),
            });
        }
        let images = data.join("mnist-10k-images.idx.gz");
        let labels = data.join("mnist-10k-labels.idx.gz");
        if images.is_file() && labels.is_file() {
            return split_one(&images, &labels, holdout.unwrap_or(2000), chw, pad, classes);
        }
        return Err(format!(
            "`{}` has neither the MNIST files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) nor mnist-10k-images.idx.gz and mnist-10k-labels.idx.gz",
            data.display()
        ));
    }
    if !data.exists() {
        return Err(format!("`{}`: no such file or directory", data.display()));
    }
    let name = data
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // `…images…` → `…labels…`; MNIST's own names also change idx3 to idx1.
    let labels_name = if name.contains("images") {
        name.replacen("images", "labels", 1)
            .replacen("-idx3-", "-idx1-", 1)
    } else {
        return Err(format!(
            "`{}`: cannot tell where its labels are; name the image file `…images…` and put `…labels…` next to it, or give a directory",
            data.display()
        ));
    };
    let labels = data.with_file_name(labels_name);
    if !labels.is_file() {
        return Err(format!(
            "`{}`: expected its labels in `{}`, which does not exist",
            data.display(),
            labels.display()
        ));
    }
    let (im, _) = (idx::read_images(data).map_err(|e| e.0)?, ());
    let default = im.n / 5;
    split_one(data, &labels, holdout.unwrap_or(default), chw, pad, classes)
}

fn split_one(
    images: &Path,
    labels: &Path,
    holdout: usize,
    chw: [usize; 3],
    pad: usize,
    classes: usize,
) -> Result<Split, String> {
    let (im, lb) = load_pair(images, labels, chw, pad, classes)?;
    if holdout == 0 || holdout >= im.n {
        return Err(format!(
            "`--holdout {holdout}` must leave images both to hold out and to train on (the file has {})",
            im.n
        ));
    }
    let n = im.n;
    Ok(Split {
        train: to_dataset(&im, lb.clone(), holdout..n, chw, pad),
        test: to_dataset(&im, lb, 0..holdout, chw, pad),
        description: format!(
            "{}: images {holdout}..{n} train ({}), the first {holdout} are held out",
            images.display(),
            n - holdout
        ),
    })
}

//! Training data, checked against the model before any training starts:
//! MNIST-style IDX files (plain or gzipped), CIFAR-10/100 binary batches and
//! image folders in torchvision's `ImageFolder` layout; and the [`Loader`]
//! that turns images into batches through the configured transforms.
//!
//! `--data` may name
//! - a directory with the official MNIST files (`train-images-idx3-ubyte`,
//!   `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
//!   `t10k-labels-idx1-ubyte`, each optionally `.gz`): train on the 60,000,
//!   evaluate on the 10,000;
//! - a directory with `mnist-10k-images.idx.gz` and `mnist-10k-labels.idx.gz`
//!   (the bundled `models/data`): the first `holdout` (default 2000) are held
//!   out, the rest (8000) train;
//! - an IDX image file, its labels in the same directory with `images`
//!   replaced by `labels` in the name (and `-idx3-` by `-idx1-`, as MNIST
//!   names them): the first `holdout` (default a fifth) are held out;
//! - CIFAR-10 (`data_batch_*.bin` + `test_batch.bin`, records of 1 label
//!   byte and 3072 pixel bytes) or CIFAR-100 (`train.bin` + `test.bin`, 2
//!   label bytes: coarse, fine; the fine label is used) directories, also
//!   one level down as published (`cifar-10-batches-bin/`,
//!   `cifar-100-binary/`), or one `.bin` file (first `holdout` held out);
//! - an image folder, `root/<class>/…/<image>.{png,jpg,jpeg}`, classes
//!   sorted by name as torchvision's `ImageFolder` sorts them; evaluated on
//!   `--val DIR` (the same classes) or on a seeded `holdout` (default a
//!   fifth).

use super::rng;
use super::transforms::Pipeline;
use cnnc_runtime::idx::{self, IdxImages};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the pixels of a data set live.
pub enum Pixels {
    /// Images of one size in memory, `c` planes (CHW) of bytes each (IDX, CIFAR).
    Memory {
        c: usize,
        h: usize,
        w: usize,
        bytes: Vec<u8>,
    },
    /// Image files, decoded when a batch needs them.
    Files(Vec<PathBuf>),
}

/// Some images of a [`Pixels`] store, with their labels.
#[derive(Clone)]
pub struct Dataset {
    pub pixels: Arc<Pixels>,
    /// Which images, in order (indices into `pixels`).
    pub items: Vec<usize>,
    pub labels: Vec<u8>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn subset(&self, pick: &[usize]) -> Dataset {
        Dataset {
            pixels: self.pixels.clone(),
            items: pick.iter().map(|&k| self.items[k]).collect(),
            labels: pick.iter().map(|&k| self.labels[k]).collect(),
        }
    }
}

pub struct Split {
    pub train: Dataset,
    pub test: Dataset,
    /// One line saying where the data came from and how it was split.
    pub description: String,
    /// Class names, where the data names them (image folders, CIFAR).
    pub classes: Option<Vec<String>>,
}

fn with_gz(dir: &Path, name: &str) -> Option<PathBuf> {
    [name.to_string(), format!("{name}.gz")]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

fn idx_dataset(im: IdxImages, labels: Vec<u8>) -> Dataset {
    let n = im.n;
    Dataset {
        pixels: Arc::new(Pixels::Memory {
            c: 1,
            h: im.rows,
            w: im.cols,
            bytes: im.pixels,
        }),
        items: (0..n).collect(),
        labels,
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

/// What the data must fit: the model's input and classes, and the transforms asked for.
pub struct Fit<'a> {
    pub chw: [usize; 3],
    pub pad: usize,
    pub classes: usize,
    pub seed: u64,
    /// `transforms.train` / `transforms.eval` from the config; `None`: the
    /// defaults (none for IDX and CIFAR; for image files what `cnnc run` does).
    pub train: Option<&'a Pipeline>,
    pub eval: Option<&'a Pipeline>,
}

impl Fit<'_> {
    fn transformed(&self) -> bool {
        self.train.is_some_and(|p| !p.geometric.is_empty())
            || self.eval.is_some_and(|p| !p.geometric.is_empty())
    }

    /// The pipelines for in-memory data (no transforms by default).
    fn memory_pipelines(&self) -> (Pipeline, Pipeline) {
        (
            self.train.cloned().unwrap_or_default(),
            self.eval.cloned().unwrap_or_default(),
        )
    }

    /// For image files: by default what `cnnc run` does to an image (resize the
    /// shorter side to 256/224 of the input for 3-channel models, centre crop,
    /// ImageNet normalisation for 3 channels), so a trained model is run on
    /// the inputs it was trained on.
    fn file_pipelines(&self) -> (Pipeline, Pipeline) {
        use super::transforms::{Size, Transform};
        let [c, h, w] = self.chw;
        let (h, w) = ((h - 2 * self.pad) as u32, (w - 2 * self.pad) as u32);
        let short = if c == 3 {
            ((h.min(w) as f64) * 256.0 / 224.0).round() as u32
        } else {
            h.min(w)
        }
        .max(h.max(w));
        let default = Pipeline {
            geometric: vec![
                Transform::Resize(Size::Shorter(short)),
                Transform::CenterCrop(h, w),
            ],
            normalize: (c == 3).then(|| {
                (
                    cnnc_runtime::input::IMAGENET_MEAN.to_vec(),
                    cnnc_runtime::input::IMAGENET_STD.to_vec(),
                )
            }),
        };
        (
            self.train.cloned().unwrap_or_else(|| default.clone()),
            self.eval.cloned().unwrap_or(default),
        )
    }

    /// A `w`×`h` image must become the model's input under both pipelines.
    fn check_size(
        &self,
        file: &Path,
        (w, h): (u32, u32),
        pipelines: &(Pipeline, Pipeline),
    ) -> Result<(), String> {
        let [_, mh, mw] = self.chw;
        if w == 0 || h == 0 {
            return Err(format!("`{}` is an empty ({w}×{h}) image", file.display()));
        }
        for (which, p) in [("train", &pipelines.0), ("eval", &pipelines.1)] {
            let (ow, oh) = p
                .out_size((w, h))
                .map_err(|e| format!("`{}` ({w}×{h}): transforms.{which}: {e}", file.display()))?;
            let (pw, ph) = (ow as usize + 2 * self.pad, oh as usize + 2 * self.pad);
            if (pw, ph) != (mw, mh) {
                let padded = if self.pad > 0 {
                    format!(" ({pw}×{ph} padded)")
                } else {
                    String::new()
                };
                let through = if p.geometric.is_empty() {
                    "with no transforms".to_string()
                } else {
                    format!("after transforms.{which}")
                };
                return Err(format!(
                    "`{}`: a {w}×{h} image is {ow}×{oh} {through}{padded}, but the model takes {mw}×{mh}; add `resize` and `center_crop` (or `random_resized_crop`) to transforms.{which}",
                    file.display()
                ));
            }
        }
        Ok(())
    }
}

fn load_pair(images: &Path, labels: &Path, fit: &Fit) -> Result<(IdxImages, Vec<u8>), String> {
    let (im, lb) = idx::read_labelled(images, labels).map_err(|e| e.0)?;
    if fit.transformed() {
        if fit.chw[0] != 1 {
            check_fit(&im, images, fit.chw, fit.pad)?;
        }
        fit.check_size(
            images,
            (im.cols as u32, im.rows as u32),
            &fit.memory_pipelines(),
        )?;
    } else {
        check_fit(&im, images, fit.chw, fit.pad)?;
    }
    check_labels(&lb, labels, fit.classes)?;
    Ok((im, lb))
}

/// The name of the last path component, for messages and guesses.
fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Loads and checks the data for a model; `val` is an image folder to evaluate on.
pub fn load(
    data: &Path,
    val: Option<&Path>,
    holdout: Option<usize>,
    fit: &Fit,
) -> Result<(Split, Pipeline, Pipeline), String> {
    let folder = data.is_dir() && !is_mnist_dir(data) && cifar_dir(data).is_none();
    if val.is_some() && !folder {
        return Err(format!(
            "`--val` names an image folder to evaluate on and goes with an image-folder `--data`; `{}` is not one",
            data.display()
        ));
    }
    let [c, h, w] = fit.chw;
    if 2 * fit.pad >= h.min(w) {
        return Err(format!(
            "`--pad {}` leaves nothing of the model's {h}×{w} input for the image",
            fit.pad
        ));
    }
    let colour = folder
        || (data.is_dir() && cifar_dir(data).is_some())
        || data.extension().is_some_and(|e| e == "bin");
    if colour && c != 1 && c != 3 {
        return Err(format!(
            "images can feed 1- or 3-channel models; this model takes {c} channels"
        ));
    }
    if folder {
        return image_folder(data, val, holdout, fit);
    }
    let pipelines = fit.memory_pipelines();
    let split = load_memory(data, holdout, fit)?;
    Ok((split, pipelines.0, pipelines.1))
}

fn is_mnist_dir(data: &Path) -> bool {
    with_gz(data, "train-images-idx3-ubyte").is_some()
        || data.join("mnist-10k-images.idx.gz").is_file()
}

fn load_memory(data: &Path, holdout: Option<usize>, fit: &Fit) -> Result<Split, String> {
    if let Some((dir, hundred)) = data.is_dir().then(|| cifar_dir(data)).flatten() {
        return cifar(&dir, hundred, holdout, fit);
    }
    if data.is_dir() {
        if let (Some(ti), Some(tl), Some(ei), Some(el)) = (
            with_gz(data, "train-images-idx3-ubyte"),
            with_gz(data, "train-labels-idx1-ubyte"),
            with_gz(data, "t10k-images-idx3-ubyte"),
            with_gz(data, "t10k-labels-idx1-ubyte"),
        ) {
            let (tim, tlb) = load_pair(&ti, &tl, fit)?;
            let (eim, elb) = load_pair(&ei, &el, fit)?;
            let (tn, en) = (tim.n, eim.n);
            return Ok(Split {
                train: idx_dataset(tim, tlb),
                test: idx_dataset(eim, elb),
                description: format!(
                    "{}: {tn} training images ({}), {en} test images ({})",
                    data.display(),
                    ti.display(),
                    ei.display()
                ),
                classes: None,
            });
        }
        let images = data.join("mnist-10k-images.idx.gz");
        let labels = data.join("mnist-10k-labels.idx.gz");
        if images.is_file() && labels.is_file() {
            return split_one(&images, &labels, holdout.unwrap_or(2000), fit);
        }
        return Err(format!(
            "`{}` has neither the MNIST files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]), mnist-10k-images.idx.gz and mnist-10k-labels.idx.gz, CIFAR batches nor class folders",
            data.display()
        ));
    }
    if !data.exists() {
        return Err(format!("`{}`: no such file or directory", data.display()));
    }
    let name = file_name(data);
    if name.ends_with(".bin") {
        let hundred = name == "train.bin" || name == "test.bin";
        let (set, _) = cifar_file(data, hundred, fit)?;
        let n = set.len();
        let holdout = holdout.unwrap_or(n / 5);
        if holdout == 0 || holdout >= n {
            return Err(format!(
                "`--holdout {holdout}` must leave images both to hold out and to train on (`{}` has {n})",
                data.display()
            ));
        }
        return Ok(Split {
            train: set.subset(&(holdout..n).collect::<Vec<_>>()),
            test: set.subset(&(0..holdout).collect::<Vec<_>>()),
            description: format!(
                "{}: CIFAR-{} records {holdout}..{n} train ({}), the first {holdout} are held out",
                data.display(),
                if hundred { 100 } else { 10 },
                n - holdout
            ),
            classes: cifar_names(data.parent().unwrap_or(Path::new(".")), hundred),
        });
    }
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
    split_one(data, &labels, holdout.unwrap_or(default), fit)
}

fn split_one(images: &Path, labels: &Path, holdout: usize, fit: &Fit) -> Result<Split, String> {
    let (im, lb) = load_pair(images, labels, fit)?;
    if holdout == 0 || holdout >= im.n {
        return Err(format!(
            "`--holdout {holdout}` must leave images both to hold out and to train on (the file has {})",
            im.n
        ));
    }
    let n = im.n;
    let all = idx_dataset(im, lb);
    Ok(Split {
        train: all.subset(&(holdout..n).collect::<Vec<_>>()),
        test: all.subset(&(0..holdout).collect::<Vec<_>>()),
        description: format!(
            "{}: images {holdout}..{n} train ({}), the first {holdout} are held out",
            images.display(),
            n - holdout
        ),
        classes: None,
    })
}

// --- CIFAR ------------------------------------------------------------------

/// The directory holding CIFAR batches (`data` or its published
/// sub-directory) and whether it is CIFAR-100.
fn cifar_dir(data: &Path) -> Option<(PathBuf, bool)> {
    for dir in [
        data.to_path_buf(),
        data.join("cifar-10-batches-bin"),
        data.join("cifar-100-binary"),
    ] {
        if dir.join("data_batch_1.bin").is_file() {
            return Some((dir, false));
        }
        if dir.join("train.bin").is_file() {
            return Some((dir, true));
        }
    }
    None
}

/// CIFAR-10's class names, as its `batches.meta.txt` lists them.
const CIFAR10: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Class names from `batches.meta.txt` / `fine_label_names.txt` next to the batches.
fn cifar_names(dir: &Path, hundred: bool) -> Option<Vec<String>> {
    let meta = dir.join(if hundred {
        "fine_label_names.txt"
    } else {
        "batches.meta.txt"
    });
    match std::fs::read_to_string(meta) {
        Ok(text) => Some(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect(),
        ),
        Err(_) if !hundred => Some(CIFAR10.iter().map(|s| s.to_string()).collect()),
        Err(_) => None,
    }
}

/// One CIFAR binary file: records of 1 (CIFAR-10) or 2 (CIFAR-100: coarse,
/// fine) label bytes and 3×32×32 pixel bytes, channel planes in row-major order.
pub fn read_cifar(path: &Path, hundred: bool) -> Result<(Vec<u8>, Vec<u8>), String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let head = if hundred { 2 } else { 1 };
    let record = head + 3072;
    if bytes.is_empty() || bytes.len() % record != 0 {
        return Err(format!(
            "`{}` has {} bytes, not a whole number of CIFAR-{} records of {record} bytes ({head} label byte{} and 3×32×32 pixels)",
            path.display(),
            bytes.len(),
            if hundred { 100 } else { 10 },
            if hundred { "s" } else { "" }
        ));
    }
    let n = bytes.len() / record;
    let mut pixels = Vec::with_capacity(n * 3072);
    let mut labels = Vec::with_capacity(n);
    for r in bytes.chunks_exact(record) {
        labels.push(r[head - 1]);
        pixels.extend_from_slice(&r[head..]);
    }
    Ok((pixels, labels))
}

fn cifar_file(path: &Path, hundred: bool, fit: &Fit) -> Result<(Dataset, usize), String> {
    let (pixels, labels) = read_cifar(path, hundred)?;
    check_labels(&labels, path, fit.classes)?;
    fit.check_size(path, (32, 32), &fit.memory_pipelines())?;
    let n = labels.len();
    Ok((
        Dataset {
            pixels: Arc::new(Pixels::Memory {
                c: 3,
                h: 32,
                w: 32,
                bytes: pixels,
            }),
            items: (0..n).collect(),
            labels,
        },
        n,
    ))
}

fn cifar(dir: &Path, hundred: bool, holdout: Option<usize>, fit: &Fit) -> Result<Split, String> {
    let (train_files, test_file) = if hundred {
        (vec![dir.join("train.bin")], dir.join("test.bin"))
    } else {
        let mut files: Vec<PathBuf> = (1..)
            .map(|i| dir.join(format!("data_batch_{i}.bin")))
            .take_while(|p| p.is_file())
            .collect();
        files.sort();
        (files, dir.join("test_batch.bin"))
    };
    let mut bytes = Vec::new();
    let mut labels = Vec::new();
    for f in &train_files {
        let (set, _) = cifar_file(f, hundred, fit)?;
        labels.extend_from_slice(&set.labels);
        if let Pixels::Memory { bytes: b, .. } = &*set.pixels {
            bytes.extend_from_slice(b);
        }
    }
    let n = labels.len();
    let train = Dataset {
        pixels: Arc::new(Pixels::Memory {
            c: 3,
            h: 32,
            w: 32,
            bytes,
        }),
        items: (0..n).collect(),
        labels,
    };
    let names = cifar_names(dir, hundred);
    let which = if hundred { 100 } else { 10 };
    if test_file.is_file() {
        let (test, en) = cifar_file(&test_file, hundred, fit)?;
        return Ok(Split {
            train,
            test,
            description: format!(
                "{}: CIFAR-{which}, {n} training images ({} file{}), {en} test images ({})",
                dir.display(),
                train_files.len(),
                if train_files.len() == 1 { "" } else { "s" },
                file_name(&test_file)
            ),
            classes: names,
        });
    }
    let holdout = holdout.unwrap_or(n / 5);
    if holdout == 0 || holdout >= n {
        return Err(format!(
            "`{}` has no {}; `--holdout {holdout}` must leave images both to hold out and to train on (there are {n})",
            dir.display(),
            file_name(&test_file)
        ));
    }
    Ok(Split {
        train: train.subset(&(holdout..n).collect::<Vec<_>>()),
        test: train.subset(&(0..holdout).collect::<Vec<_>>()),
        description: format!(
            "{}: CIFAR-{which}, images {holdout}..{n} train, the first {holdout} are held out (no {})",
            dir.display(),
            file_name(&test_file)
        ),
        classes: names,
    })
}

// --- image folders -------------------------------------------------------------

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Image files under `dir`, recursively, in the order torchvision's
/// `make_dataset` lists them (directories sorted, then file names sorted).
fn images_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read `{}`: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    let (dirs, files): (Vec<PathBuf>, Vec<PathBuf>) = entries.into_iter().partition(|p| p.is_dir());
    for f in files {
        let ext = f
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if EXTENSIONS.contains(&ext.as_str()) {
            out.push(f);
        }
    }
    for d in dirs {
        images_under(&d, out)?;
    }
    Ok(())
}

/// An image folder's classes (sorted by name), its images and their labels.
type Folder = (Vec<String>, Vec<PathBuf>, Vec<u8>);

/// Class folders (sorted by name, hidden ones skipped) and their images.
pub fn scan_folder(root: &Path) -> Result<Folder, String> {
    let mut classes: Vec<String> = std::fs::read_dir(root)
        .map_err(|e| format!("cannot read `{}`: {e}", root.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    classes.sort();
    if classes.is_empty() {
        return Err(format!(
            "`{}` has no class folders (an image folder holds one folder of images per class, `{}/<class>/<image>.png`), no MNIST IDX files (train-images-idx3-ubyte[.gz] …, or mnist-10k-images.idx.gz) and no CIFAR batches (data_batch_1.bin …, or train.bin)",
            root.display(),
            root.display()
        ));
    }
    if classes.len() > 256 {
        return Err(format!(
            "`{}` has {} class folders; cnnc train takes at most 256 classes",
            root.display(),
            classes.len()
        ));
    }
    let (mut files, mut labels) = (Vec::new(), Vec::new());
    for (i, class) in classes.iter().enumerate() {
        let dir = root.join(class);
        let before = files.len();
        images_under(&dir, &mut files)?;
        if files.len() == before {
            return Err(format!(
                "the class folder `{}` has no images (.png, .jpg or .jpeg)",
                dir.display()
            ));
        }
        labels.resize(files.len(), i as u8);
    }
    Ok((classes, files, labels))
}

/// Every image's size from its header (nothing decoded), in parallel; an
/// error names the first file that is not a readable PNG or JPEG.
fn image_sizes(files: &[PathBuf]) -> Result<Vec<(u32, u32)>, String> {
    files
        .par_iter()
        .map(|f| {
            image::ImageReader::open(f)
                .and_then(|r| r.with_guessed_format())
                .map_err(|e| e.to_string())
                .and_then(|r| r.into_dimensions().map_err(|e| e.to_string()))
                .map_err(|e| format!("`{}` is not a readable image: {e}", f.display()))
        })
        .collect()
}

fn image_folder(
    data: &Path,
    val: Option<&Path>,
    holdout: Option<usize>,
    fit: &Fit,
) -> Result<(Split, Pipeline, Pipeline), String> {
    let pipelines = fit.file_pipelines();
    let (classes, files, labels) = scan_folder(data)?;
    if classes.len() > fit.classes {
        return Err(format!(
            "`{}` has {} classes ({}), but the model has {} outputs; set its class count with `--set num_classes={}` (or the model's parameter for it)",
            data.display(),
            classes.len(),
            preview(&classes),
            fit.classes,
            classes.len()
        ));
    }
    let mut all_files = files;
    let mut all_labels = labels;
    let n_train = all_files.len();
    if let Some(v) = val {
        let (vclasses, vfiles, vlabels) = scan_folder(v)?;
        if vclasses != classes {
            return Err(format!(
                "`{}` has the classes {}, but `{}` has {}: the validation folder needs the same class folders",
                v.display(),
                preview(&vclasses),
                data.display(),
                preview(&classes)
            ));
        }
        all_files.extend(vfiles);
        all_labels.extend(vlabels);
    }
    let sizes = image_sizes(&all_files)?;
    for (f, &s) in all_files.iter().zip(&sizes) {
        fit.check_size(f, s, &pipelines)?;
    }
    let n = all_files.len();
    let all = Dataset {
        pixels: Arc::new(Pixels::Files(all_files)),
        items: (0..n).collect(),
        labels: all_labels,
    };
    let split = if let Some(v) = val {
        Split {
            train: all.subset(&(0..n_train).collect::<Vec<_>>()),
            test: all.subset(&(n_train..n).collect::<Vec<_>>()),
            description: format!(
                "{}: {} classes, {n_train} training images; {} validation images in {}",
                data.display(),
                classes.len(),
                n - n_train,
                v.display()
            ),
            classes: Some(classes),
        }
    } else {
        let holdout = holdout.unwrap_or(n / 5);
        if holdout == 0 || holdout >= n {
            return Err(format!(
                "`--holdout {holdout}` must leave images both to hold out and to train on (`{}` has {n}); or give a validation folder with `--val`",
                data.display()
            ));
        }
        // A seeded shuffle picks the held-out images; both parts keep file order.
        let order = rng::permutation(n, rng::key(&[fit.seed, 4]));
        let mut test: Vec<usize> = order[..holdout].to_vec();
        let mut train: Vec<usize> = order[holdout..].to_vec();
        test.sort_unstable();
        train.sort_unstable();
        Split {
            train: all.subset(&train),
            test: all.subset(&test),
            description: format!(
                "{}: {} classes, {} training images, {holdout} held out (chosen with seed {})",
                data.display(),
                classes.len(),
                n - holdout,
                fit.seed
            ),
            classes: Some(classes),
        }
    };
    Ok((split, pipelines.0, pipelines.1))
}

fn preview(names: &[String]) -> String {
    let shown: Vec<String> = names.iter().take(5).map(|n| format!("`{n}`")).collect();
    if names.len() > 5 {
        format!("{}, …", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

// --- batches -------------------------------------------------------------------

/// Turns a data set's images into model inputs: decode (files), convert the
/// colours to the model's channels, transform, scale to [0, 1], normalise,
/// zero-pad by `pad`.
pub struct Loader {
    pub chw: [usize; 3],
    pub pad: usize,
    pub pipeline: Pipeline,
}

impl Loader {
    /// Image `k` of `set` into `out` (one model input); random transforms draw under `key`.
    pub fn one(&self, set: &Dataset, k: usize, key: u64, out: &mut [f32]) -> Result<(), String> {
        let [c, h, w] = self.chw;
        let (ih, iw) = (h - 2 * self.pad, w - 2 * self.pad);
        let item = set.items[k];
        let img = match &*set.pixels {
            Pixels::Memory {
                c: sc,
                h: sh,
                w: sw,
                bytes,
            } if self.pipeline.geometric.is_empty() && *sc == c && (*sh, *sw) == (ih, iw) => {
                // As they are: no image round trip.
                let per = sc * sh * sw;
                let src = &bytes[item * per..(item + 1) * per];
                for ch in 0..c {
                    for r in 0..ih {
                        let row = &src[(ch * ih + r) * iw..(ch * ih + r + 1) * iw];
                        let at = (ch * h + r + self.pad) * w + self.pad;
                        for (o, &b) in out[at..at + iw].iter_mut().zip(row) {
                            *o = b as f32 / 255.0;
                        }
                    }
                }
                self.normalize(out);
                return Ok(());
            }
            Pixels::Memory {
                c: sc,
                h: sh,
                w: sw,
                bytes,
            } => {
                let per = sc * sh * sw;
                let src = &bytes[item * per..(item + 1) * per];
                let (sh32, sw32) = (*sh as u32, *sw as u32);
                if *sc == 1 {
                    image::DynamicImage::ImageLuma8(
                        image::GrayImage::from_raw(sw32, sh32, src.to_vec())
                            .ok_or("bad image buffer")?,
                    )
                } else {
                    let plane = sh * sw;
                    image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(sw32, sh32, |x, y| {
                        let i = y as usize * sw + x as usize;
                        image::Rgb([src[i], src[plane + i], src[2 * plane + i]])
                    }))
                }
            }
            Pixels::Files(files) => {
                let f = &files[item];
                image::ImageReader::open(f)
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.with_guessed_format().map_err(|e| e.to_string()))
                    .and_then(|r| r.decode().map_err(|e| e.to_string()))
                    .map_err(|e| format!("cannot decode `{}`: {e}", f.display()))?
            }
        };
        let img = if c == 1 {
            image::DynamicImage::ImageLuma8(img.to_luma8())
        } else {
            image::DynamicImage::ImageRgb8(img.to_rgb8())
        };
        let img = self.pipeline.apply(img, key);
        if (img.width() as usize, img.height() as usize) != (iw, ih) {
            return Err(format!(
                "image {item} became {}×{} after the transforms, not {iw}×{ih}",
                img.width(),
                img.height()
            ));
        }
        let bytes = img.as_bytes();
        for r in 0..ih {
            for x in 0..iw {
                for ch in 0..c {
                    out[(ch * h + r + self.pad) * w + x + self.pad] =
                        bytes[(r * iw + x) * c + ch] as f32 / 255.0;
                }
            }
        }
        self.normalize(out);
        Ok(())
    }

    fn normalize(&self, out: &mut [f32]) {
        let Some((mean, std)) = &self.pipeline.normalize else {
            return;
        };
        let [c, h, w] = self.chw;
        let (hw, pad) = (h * w, self.pad);
        for ch in 0..c {
            let (m, s) = (mean[ch % mean.len()], std[ch % std.len()]);
            let plane = &mut out[ch * hw..(ch + 1) * hw];
            for r in pad..h - pad {
                for v in &mut plane[r * w + pad..(r + 1) * w - pad] {
                    *v = (*v - m) / s;
                }
            }
        }
    }

    /// Images `ks` of `set` as a batch (decoded in parallel), with their labels.
    pub fn batch(
        &self,
        set: &Dataset,
        ks: &[usize],
        key: &(dyn Fn(usize) -> u64 + Sync),
    ) -> Result<(Vec<f32>, Vec<u8>), String> {
        let per: usize = self.chw.iter().product();
        let mut x = vec![0f32; ks.len() * per];
        x.par_chunks_mut(per)
            .zip(ks.par_iter())
            .try_for_each(|(out, &k)| self.one(set, k, key(set.items[k]), out))?;
        Ok((x, ks.iter().map(|&k| set.labels[k]).collect()))
    }
}

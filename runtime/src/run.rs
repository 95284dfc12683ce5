//! The one command line for running a model on inputs, shared by `cnnc run`
//! (the reference evaluator) and the binaries `cnnc build` writes, and the one
//! run loop behind both: inputs, batches, top-k table, accuracy, `--output`.

use crate::input::{ImageOptions, IndexRange, InputOptions};
use crate::output::{report, Report, Scores};
use crate::weights::WeightFile;
use crate::{shape_text, Error, Result, Tensor};
use std::path::{Path, PathBuf};

/// The flags that say what to run on and what to print. `cnnc run` and a
/// built binary flatten this into their own command lines, so the two cannot
/// drift apart.
#[derive(clap::Args, Debug, Clone)]
pub struct RunOptions {
    /// PyTorch state_dict saved with safetensors.torch.save_file.
    #[arg(long)]
    pub weights: PathBuf,
    /// .npy arrays ([N,C,H,W] or [C,H,W]; f32, f64 or u8), PNG/JPEG images, or an MNIST IDX image file.
    #[arg(long, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Write the outputs (logits) as a float32 .npy file.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// How many classes to list per input.
    #[arg(long, default_value_t = 5)]
    pub topk: usize,
    /// Class names, one per line (models/labels/imagenet.txt, models/labels/digits.txt).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// True labels as an MNIST IDX label file: prints the accuracy.
    #[arg(long)]
    pub targets: Option<PathBuf>,
    /// Samples to take from .npy and IDX inputs: `7` or `0..100`.
    #[arg(long, value_parser = parse_index)]
    pub index: Option<IndexRange>,
    /// Zero padding around IDX digits (2 turns 28×28 into LeNet's 32×32).
    #[arg(long, default_value_t = 0)]
    pub pad: usize,
    /// Images: resize the shorter side to this before the centre crop.
    #[arg(long)]
    pub resize: Option<u32>,
    /// Images: keep values in [0, 1] instead of normalising with ImageNet statistics.
    #[arg(long)]
    pub no_normalize: bool,
    /// Images: per-channel mean, e.g. `0.5,0.5,0.5` (with --std).
    #[arg(long, requires = "std", value_parser = parse_floats)]
    pub mean: Option<Floats>,
    /// Images: per-channel standard deviation (with --mean).
    #[arg(long, requires = "mean", value_parser = parse_floats)]
    pub std: Option<Floats>,
    /// Images: refuse an image that is not already the model's size and colours
    /// (by default it is resized, cropped and converted, with a note on stderr).
    #[arg(long)]
    pub strict_input: bool,
    /// Images run at once; memory is planned for it (and --bench times this batch).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub batch: u64,
    /// Print at most this many per-input lines.
    #[arg(long, default_value_t = 20)]
    pub show: usize,
    /// Fail, instead of warning, when a weight is NaN or infinite.
    #[arg(long)]
    pub strict_weights: bool,
}

/// Numbers given as `0.5,0.5,0.5`.
#[derive(Debug, Clone, PartialEq)]
pub struct Floats(pub Vec<f32>);

fn parse_floats(text: &str) -> std::result::Result<Floats, String> {
    text.split(',')
        .map(|v| v.trim().parse::<f32>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map(Floats)
        .map_err(|_| "expected numbers separated by commas, e.g. `0.5,0.5,0.5`".to_string())
}

fn parse_index(text: &str) -> std::result::Result<IndexRange, String> {
    IndexRange::parse(text).map_err(|e| e.0)
}

/// What the run loop needs to know about the model it feeds.
#[derive(Debug, Clone)]
pub struct ModelIo {
    /// The per-image input.
    pub chw: [usize; 3],
    /// The per-image output: `[classes]` gets a table, anything else only `--output`.
    pub output_shape: Vec<usize>,
    pub scores: Scores,
}

impl RunOptions {
    /// Fails on an `--output` that cannot be written, or that is one of the
    /// files read (`also`: the model file), before any work is done.
    pub fn check_output(&self, also: &[&Path]) -> Result<()> {
        let Some(path) = &self.output else {
            return Ok(());
        };
        crate::output::check_target(path)?;
        let inputs: Vec<PathBuf> = self
            .input
            .iter()
            .chain([&self.weights])
            .cloned()
            .chain(also.iter().map(|p| p.to_path_buf()))
            .collect();
        if let Some(same) = crate::output::same_file_as(path, inputs.iter()) {
            return Err(Error(format!(
                "`--output {}` is the input `{}`; write the outputs to another file",
                path.display(),
                same.display()
            )));
        }
        Ok(())
    }

    /// Reads `--weights` and checks every value is finite (a warning on
    /// stderr, or an error with `--strict-weights`).
    pub fn load_weights(&self) -> Result<WeightFile> {
        let weights = WeightFile::load(&self.weights)?;
        let where_ = self.weights.display();
        match weights.check_finite(self.strict_weights) {
            Ok(None) => {}
            Ok(Some(warning)) => eprintln!("warning: `{where_}`: {warning}"),
            Err(Error(e)) => return Err(Error(format!("`{where_}`: {e}"))),
        }
        Ok(weights)
    }

    /// How input files become tensors.
    pub fn input_options(&self) -> InputOptions {
        InputOptions {
            image: ImageOptions {
                resize: self.resize,
                normalize: match (&self.mean, &self.std) {
                    (Some(m), Some(s)) => Some((m.0.clone(), s.0.clone())),
                    _ => None,
                },
                no_normalize: self.no_normalize,
                strict: self.strict_input,
            },
            index: self.index,
            pad: self.pad,
        }
    }
}

/// A model's forward pass: images (NCHW) and their count in, outputs out.
pub type Forward<'a> = dyn FnMut(&[f32], usize) -> Result<Vec<f32>> + 'a;

/// Loads the inputs, runs `forward` on batches of at most `--batch` images
/// (it gets the images and their count and returns the outputs), writes
/// `--output`, and prints the class table (with accuracy under `--targets`).
/// Everything that can be checked before running is checked first.
pub fn run_inputs(options: &RunOptions, model: &ModelIo, forward: &mut Forward) -> Result<()> {
    if options.input.is_empty() {
        return Err(Error("no input given: give --input FILE...".to_string()));
    }
    let labels = match &options.labels {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| Error(format!("cannot read `{}`: {e}", p.display())))?
                .lines()
                .map(|l| l.trim().to_string())
                .collect::<Vec<_>>(),
        ),
        None => None,
    };
    let targets = match &options.targets {
        Some(p) => Some((p, crate::input::idx_labels(p)?)),
        None => None,
    };
    let mut notes = Vec::new();
    let input = crate::input::load_noting(
        &options.input,
        model.chw,
        &options.input_options(),
        &mut notes,
    )?;
    print_conversions(&notes);
    let n = input.shape[0];
    let targets = match &targets {
        Some((p, all)) => {
            let offset = options.index.map_or(0, |r| r.start);
            Some(all.get(offset..offset + n).ok_or_else(|| {
                Error(format!(
                    "`{}` has {} labels, fewer than the {} inputs",
                    p.display(),
                    all.len(),
                    offset + n
                ))
            })?)
        }
        None => None,
    };
    let per: usize = model.chw.iter().product();
    let out_per: usize = model.output_shape.iter().product();
    let batch = options.batch as usize;
    let mut outputs = Vec::with_capacity(n * out_per);
    for start in (0..n).step_by(batch) {
        let end = (start + batch).min(n);
        outputs.extend(forward(&input.data[start * per..end * per], end - start)?);
    }
    if outputs.len() != n * out_per {
        return Err(Error(format!(
            "internal error: {n} inputs gave {} output values, expected {}",
            outputs.len(),
            n * out_per
        )));
    }
    if let Some(path) = &options.output {
        let mut shape = vec![n];
        shape.extend(&model.output_shape);
        crate::output::write_npy(path, &Tensor::new(shape, outputs.clone())?)?;
    }
    if model.output_shape.len() == 1 {
        let r = Report {
            classes: model.output_shape[0],
            scores: model.scores,
            labels: labels.as_deref(),
            targets,
            topk: options.topk,
            show: options.show,
        };
        print!("{}", report(&outputs, n, &r));
    } else {
        println!(
            "{n} outputs of shape {} (no class table for feature maps)",
            shape_text(&model.output_shape)
        );
    }
    if let Some(path) = &options.output {
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Most conversion notes printed; the rest are counted.
const MAX_NOTES: usize = 5;

/// Says on stderr which images were resized, cropped or converted to fit the
/// model, so a confident answer about a picture the model never saw is not
/// a silent surprise.
fn print_conversions(notes: &[String]) {
    for note in notes.iter().take(MAX_NOTES) {
        eprintln!("note: {note}");
    }
    if notes.len() > MAX_NOTES {
        eprintln!(
            "note: … and {} more images converted",
            notes.len() - MAX_NOTES
        );
    }
    if !notes.is_empty() {
        eprintln!("note: `--strict-input` makes a conversion an error");
    }
}

//! Image transforms of `cnnc train`, named and parameterised as
//! torchvision.transforms names them: `resize`, `center_crop`,
//! `random_resized_crop`, `random_crop` (with padding),
//! `random_horizontal_flip` and `normalize` (with an `imagenet` preset).
//!
//! Random transforms draw from the counter-based generator of [`rng`]
//! under a key made of (seed, epoch, image index), so two runs with the same
//! seed produce bit-identical batches whatever the thread count.

use super::rng;
use cnnc_runtime::input::{IMAGENET_MEAN, IMAGENET_STD};
use image::imageops::FilterType;
use image::DynamicImage;
use serde_yaml::Value;

/// A transform of the YAML config's `transforms.train` / `transforms.eval` lists.
#[derive(Clone, Debug, PartialEq)]
pub enum Transform {
    /// `resize: 256` (the shorter side, keeping the aspect ratio) or `resize: [h, w]`.
    Resize(Size),
    /// `center_crop: 224` or `[h, w]`.
    CenterCrop(u32, u32),
    /// `random_resized_crop: 224` or `{size, scale: [0.08, 1.0], ratio: [0.75, 1.3333]}`.
    RandomResizedCrop {
        h: u32,
        w: u32,
        scale: (f64, f64),
        ratio: (f64, f64),
    },
    /// `random_crop: 32` or `{size: 32, padding: 4}` (zero padding on every side first).
    RandomCrop { h: u32, w: u32, padding: u32 },
    /// `random_horizontal_flip` or `random_horizontal_flip: 0.5` (the probability).
    RandomHorizontalFlip(f64),
    /// `normalize: imagenet` or `{mean: [...], std: [...]}`, on values in [0, 1]; must come last.
    Normalize { mean: Vec<f32>, std: Vec<f32> },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Size {
    /// The shorter side becomes this.
    Shorter(u32),
    Exact(u32, u32),
}

fn number(v: &Value, what: &str) -> Result<f64, String> {
    v.as_f64()
        .ok_or_else(|| format!("`{what}` takes a number, not `{}`", show(v)))
}

fn show(v: &Value) -> String {
    serde_yaml::to_string(v)
        .map(|s| s.trim().replace('\n', " "))
        .unwrap_or_default()
}

fn side(v: &Value, what: &str) -> Result<u32, String> {
    match v.as_u64() {
        Some(n) if n > 0 && n <= 1 << 16 => Ok(n as u32),
        _ => Err(format!(
            "`{what}` takes a positive size in pixels, not `{}`",
            show(v)
        )),
    }
}

/// `224` → (224, 224); `[h, w]` → (h, w).
fn size2(v: &Value, what: &str) -> Result<(u32, u32), String> {
    match v {
        Value::Sequence(s) if s.len() == 2 => Ok((side(&s[0], what)?, side(&s[1], what)?)),
        Value::Sequence(_) => Err(format!("`{what}` takes a size or [height, width]")),
        v => {
            let n = side(v, what)?;
            Ok((n, n))
        }
    }
}

fn pair(v: &Value, what: &str) -> Result<(f64, f64), String> {
    match v {
        Value::Sequence(s) if s.len() == 2 => Ok((number(&s[0], what)?, number(&s[1], what)?)),
        _ => Err(format!("`{what}` takes two numbers [low, high]")),
    }
}

fn floats(v: &Value, what: &str) -> Result<Vec<f32>, String> {
    match v {
        Value::Sequence(s) => s
            .iter()
            .map(|x| number(x, what).map(|f| f as f32))
            .collect(),
        _ => Err(format!("`{what}` takes a list of numbers")),
    }
}

/// The map form's fields, refusing unknown ones.
fn fields<'a>(
    v: &'a Value,
    name: &str,
    allowed: &[&str],
) -> Result<Vec<(&'a str, &'a Value)>, String> {
    let Value::Mapping(m) = v else {
        return Err(format!(
            "`{name}` takes {}",
            allowed
                .iter()
                .map(|a| format!("`{a}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    let mut out = Vec::new();
    for (k, val) in m {
        let k = k.as_str().unwrap_or("");
        if !allowed.contains(&k) {
            return Err(format!(
                "`{name}` has no setting `{k}` (it takes {})",
                allowed.join(", ")
            ));
        }
        out.push((k, val));
    }
    Ok(out)
}

pub const NAMES: &str =
    "resize, center_crop, random_resized_crop, random_crop, random_horizontal_flip, normalize";

impl Transform {
    /// One list item: `name` or `{name: arguments}`.
    pub fn parse(item: &Value) -> Result<Transform, String> {
        let (name, arg) = match item {
            Value::String(s) => (s.as_str(), Value::Null),
            Value::Mapping(m) if m.len() == 1 => {
                let (k, v) = m.iter().next().expect("one entry");
                (k.as_str().unwrap_or(""), v.clone())
            }
            _ => {
                return Err(format!(
                    "a transform is a name or `name: arguments`, not `{}`",
                    show(item)
                ))
            }
        };
        let needs = |what: &str| -> Result<(), String> {
            if arg.is_null() {
                Err(format!("`{name}` needs {what}"))
            } else {
                Ok(())
            }
        };
        Ok(match name {
            "resize" => {
                needs("a size")?;
                match &arg {
                    Value::Sequence(_) => {
                        let (h, w) = size2(&arg, name)?;
                        Transform::Resize(Size::Exact(h, w))
                    }
                    v => Transform::Resize(Size::Shorter(side(v, name)?)),
                }
            }
            "center_crop" => {
                needs("a size")?;
                let (h, w) = size2(&arg, name)?;
                Transform::CenterCrop(h, w)
            }
            "random_resized_crop" => {
                needs("a size")?;
                let (mut size, mut scale, mut ratio) = (None, (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0));
                if let Value::Mapping(_) = arg {
                    for (k, v) in fields(&arg, name, &["size", "scale", "ratio"])? {
                        match k {
                            "size" => size = Some(size2(v, "random_resized_crop.size")?),
                            "scale" => scale = pair(v, "random_resized_crop.scale")?,
                            _ => ratio = pair(v, "random_resized_crop.ratio")?,
                        }
                    }
                } else {
                    size = Some(size2(&arg, name)?);
                }
                let (h, w) = size.ok_or("`random_resized_crop` needs a `size`")?;
                if !(scale.0 > 0.0 && scale.0 <= scale.1 && scale.1 <= 1.0) {
                    return Err(format!(
                        "`random_resized_crop.scale` must be 0 < low ≤ high ≤ 1, not [{}, {}]",
                        scale.0, scale.1
                    ));
                }
                if !(ratio.0 > 0.0 && ratio.0 <= ratio.1) {
                    return Err(format!(
                        "`random_resized_crop.ratio` must be 0 < low ≤ high, not [{}, {}]",
                        ratio.0, ratio.1
                    ));
                }
                Transform::RandomResizedCrop { h, w, scale, ratio }
            }
            "random_crop" => {
                needs("a size")?;
                let (mut size, mut padding) = (None, 0);
                if let Value::Mapping(_) = arg {
                    for (k, v) in fields(&arg, name, &["size", "padding"])? {
                        match k {
                            "size" => size = Some(size2(v, "random_crop.size")?),
                            _ => {
                                padding = v.as_u64().filter(|&p| p <= 1 << 12).ok_or(
                                    "`random_crop.padding` takes a number of pixels".to_string(),
                                )? as u32
                            }
                        }
                    }
                } else {
                    size = Some(size2(&arg, name)?);
                }
                let (h, w) = size.ok_or("`random_crop` needs a `size`")?;
                Transform::RandomCrop { h, w, padding }
            }
            "random_horizontal_flip" => {
                let p = match &arg {
                    Value::Null => 0.5,
                    Value::Mapping(_) => {
                        let mut p = 0.5;
                        for (_, v) in fields(&arg, name, &["p"])? {
                            p = number(v, "random_horizontal_flip.p")?;
                        }
                        p
                    }
                    v => number(v, name)?,
                };
                if !(0.0..=1.0).contains(&p) {
                    return Err(format!(
                        "`random_horizontal_flip` takes a probability in [0, 1], not {p}"
                    ));
                }
                Transform::RandomHorizontalFlip(p)
            }
            "normalize" => {
                match &arg {
                    Value::String(s) if s == "imagenet" => Transform::Normalize {
                        mean: IMAGENET_MEAN.to_vec(),
                        std: IMAGENET_STD.to_vec(),
                    },
                    Value::Mapping(_) => {
                        let (mut mean, mut std) = (None, None);
                        for (k, v) in fields(&arg, name, &["mean", "std"])? {
                            if k == "mean" {
                                mean = Some(floats(v, "normalize.mean")?);
                            } else {
                                std = Some(floats(v, "normalize.std")?);
                            }
                        }
                        let (Some(mean), Some(std)) = (mean, std) else {
                            return Err("`normalize` needs both `mean` and `std`".into());
                        };
                        if mean.len() != std.len() || std.iter().any(|&s| s.is_nan() || s == 0.0) {
                            return Err("`normalize` needs as many `std` values as `mean` values, none zero".into());
                        }
                        Transform::Normalize { mean, std }
                    }
                    _ => {
                        return Err(
                            "`normalize` takes `imagenet` or `{mean: [...], std: [...]}`".into(),
                        )
                    }
                }
            }
            other => return Err(format!("unknown transform `{other}` (known: {NAMES})")),
        })
    }

    /// The size (width, height) this transform makes of a `w`×`h` image;
    /// an error where it cannot take it.
    pub fn out_size(&self, (w, h): (u32, u32)) -> Result<(u32, u32), String> {
        Ok(match *self {
            Transform::Resize(Size::Exact(rh, rw)) => (rw, rh),
            Transform::Resize(Size::Shorter(s)) => shorter_to(w, h, s),
            Transform::CenterCrop(ch, cw) => {
                if cw > w || ch > h {
                    return Err(format!(
                        "`center_crop: [{ch}, {cw}]` is larger than the {w}×{h} image it gets"
                    ));
                }
                (cw, ch)
            }
            Transform::RandomResizedCrop { h: ch, w: cw, .. } => (cw, ch),
            Transform::RandomCrop {
                h: ch,
                w: cw,
                padding,
            } => {
                if cw > w + 2 * padding || ch > h + 2 * padding {
                    return Err(format!(
                        "`random_crop` of {cw}×{ch} is larger than the {w}×{h} image it gets (padded by {padding})"
                    ));
                }
                (cw, ch)
            }
            Transform::RandomHorizontalFlip(_) | Transform::Normalize { .. } => (w, h),
        })
    }

    pub fn is_random(&self) -> bool {
        matches!(
            self,
            Transform::RandomResizedCrop { .. }
                | Transform::RandomCrop { .. }
                | Transform::RandomHorizontalFlip(_)
        )
    }
}

/// torchvision's Resize(int): the shorter side becomes `s`, the longer
/// `int(s · long / short)`.
fn shorter_to(w: u32, h: u32, s: u32) -> (u32, u32) {
    if w <= h {
        (s, ((s as u64 * h as u64) / w as u64).max(1) as u32)
    } else {
        (((s as u64 * w as u64) / h as u64).max(1) as u32, s)
    }
}

/// A list of transforms, checked: `normalize` only last.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pipeline {
    /// Geometric transforms, on the decoded image.
    pub geometric: Vec<Transform>,
    /// Mean and std of the final `normalize`, if any.
    pub normalize: Option<(Vec<f32>, Vec<f32>)>,
}

impl Pipeline {
    pub fn parse(items: &[Value], which: &str) -> Result<Pipeline, String> {
        let mut p = Pipeline::default();
        for (i, item) in items.iter().enumerate() {
            let t = Transform::parse(item).map_err(|e| format!("transforms.{which}[{i}]: {e}"))?;
            if p.normalize.is_some() {
                return Err(format!(
                    "transforms.{which}: `normalize` must be the last transform (it works on the tensor)"
                ));
            }
            match t {
                Transform::Normalize { mean, std } => p.normalize = Some((mean, std)),
                t => p.geometric.push(t),
            }
        }
        Ok(p)
    }

    /// The final size (width, height) of a `w`×`h` image.
    pub fn out_size(&self, mut size: (u32, u32)) -> Result<(u32, u32), String> {
        for t in &self.geometric {
            size = t.out_size(size)?;
        }
        Ok(size)
    }

    pub fn is_random(&self) -> bool {
        self.geometric.iter().any(Transform::is_random)
    }

    /// Applies the geometric transforms; random ones draw `uniform(key, 0..)` in order.
    pub fn apply(&self, mut img: DynamicImage, key: u64) -> DynamicImage {
        let mut draw = 0u64;
        let mut u = || {
            let v = rng::uniform(key, draw);
            draw += 1;
            v
        };
        for t in &self.geometric {
            let (w, h) = (img.width(), img.height());
            img = match *t {
                Transform::Resize(s) => {
                    let (rw, rh) = match s {
                        Size::Exact(rh, rw) => (rw, rh),
                        Size::Shorter(s) => shorter_to(w, h, s),
                    };
                    if (rw, rh) == (w, h) {
                        img
                    } else {
                        img.resize_exact(rw, rh, FilterType::Triangle)
                    }
                }
                Transform::CenterCrop(ch, cw) => {
                    // torchvision rounds the offsets as Python does, half to
                    // even: int(round((h − ch) / 2)).
                    let top = ((h - ch) as f64 / 2.0).round_ties_even() as u32;
                    let left = ((w - cw) as f64 / 2.0).round_ties_even() as u32;
                    img.crop_imm(left, top, cw, ch)
                }
                Transform::RandomResizedCrop {
                    h: oh,
                    w: ow,
                    scale,
                    ratio,
                } => {
                    let (top, left, ch, cw) = resized_crop_box(w, h, scale, ratio, &mut u);
                    img.crop_imm(left, top, cw, ch)
                        .resize_exact(ow, oh, FilterType::Triangle)
                }
                Transform::RandomCrop {
                    h: ch,
                    w: cw,
                    padding,
                } => {
                    let img = if padding > 0 {
                        let (pw, ph) = (w + 2 * padding, h + 2 * padding);
                        let mut canvas = match img {
                            DynamicImage::ImageLuma8(_) => DynamicImage::new_luma8(pw, ph),
                            _ => DynamicImage::new_rgb8(pw, ph),
                        };
                        image::imageops::replace(&mut canvas, &img, padding as i64, padding as i64);
                        canvas
                    } else {
                        img
                    };
                    let (pw, ph) = (img.width(), img.height());
                    let top = below(ph - ch + 1, u());
                    let left = below(pw - cw + 1, u());
                    img.crop_imm(left, top, cw, ch)
                }
                Transform::RandomHorizontalFlip(p) => {
                    if u() < p {
                        img.fliph()
                    } else {
                        img
                    }
                }
                Transform::Normalize { .. } => img,
            };
        }
        img
    }
}

/// `randint(0, n)`: an integer in [0, n) from a uniform draw `u`.
fn below(n: u32, u: f64) -> u32 {
    ((u * n as f64) as u32).min(n - 1)
}

/// torchvision's RandomResizedCrop.get_params: (top, left, height, width),
/// Python's `round` (half to even) included.
fn resized_crop_box(
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    u: &mut dyn FnMut() -> f64,
) -> (u32, u32, u32, u32) {
    let area = (width as f64) * (height as f64);
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * (scale.0 + (scale.1 - scale.0) * u());
        let aspect = (lr0 + (lr1 - lr0) * u()).exp();
        let w = (target * aspect).sqrt().round_ties_even() as i64;
        let h = (target / aspect).sqrt().round_ties_even() as i64;
        if 0 < w && w <= width as i64 && 0 < h && h <= height as i64 {
            let (w, h) = (w as u32, h as u32);
            let top = below(height - h + 1, u());
            let left = below(width - w + 1, u());
            return (top, left, h, w);
        }
    }
    // Fallback: the central crop with the ratio clamped.
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < ratio.0 {
        (
            width,
            ((width as f64 / ratio.0).round_ties_even() as u32).clamp(1, height),
        )
    } else if in_ratio > ratio.1 {
        (
            ((height as f64 * ratio.1).round_ties_even() as u32).clamp(1, width),
            height,
        )
    } else {
        (width, height)
    };
    ((height - h) / 2, (width - w) / 2, h, w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Pipeline, String> {
        let v: Vec<Value> = serde_yaml::from_str(yaml).unwrap();
        Pipeline::parse(&v, "train")
    }

    #[test]
    fn parses_torchvision_names_and_sizes() {
        let p = parse(
            "- resize: 40\n- random_resized_crop: {size: 32, scale: [0.5, 1.0]}\n- random_crop: {size: [30, 28], padding: 2}\n- random_horizontal_flip\n- normalize: imagenet\n",
        )
        .unwrap();
        assert_eq!(p.geometric.len(), 4);
        assert_eq!(p.normalize.as_ref().unwrap().0, IMAGENET_MEAN.to_vec());
        assert_eq!(p.out_size((80, 60)).unwrap(), (28, 30));
        assert_eq!(shorter_to(80, 60, 40), (53, 40));
        assert!(parse("- normalize: imagenet\n- resize: 3\n")
            .unwrap_err()
            .contains("last"));
        assert!(parse("- rotate: 3\n")
            .unwrap_err()
            .contains("unknown transform `rotate`"));
        assert!(parse("- random_crop: {size: 3, pad: 1}\n")
            .unwrap_err()
            .contains("no setting `pad`"));
        assert!(parse("- center_crop: 100\n")
            .unwrap()
            .out_size((80, 60))
            .unwrap_err()
            .contains("larger"));
    }

    #[test]
    fn centre_crops_round_half_to_even_as_torchvision() {
        // (7 − 2) / 2 = 2.5 → 2 (Python's round), (9 − 2) / 2 = 3.5 → 4.
        let img = DynamicImage::ImageLuma8(image::GrayImage::from_fn(9, 7, |x, y| {
            image::Luma([(10 * y + x) as u8])
        }));
        let p = Pipeline {
            geometric: vec![Transform::CenterCrop(2, 2)],
            normalize: None,
        };
        assert_eq!(p.apply(img, 0).as_bytes(), &[24, 25, 34, 35]);
    }

    #[test]
    fn random_transforms_depend_only_on_the_key() {
        let p = parse("- random_resized_crop: 16\n- random_crop: {size: 16, padding: 4}\n- random_horizontal_flip\n").unwrap();
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_fn(40, 30, |x, y| {
            image::Rgb([x as u8 * 6, y as u8 * 8, (x * y) as u8])
        }));
        let a = p.apply(img.clone(), 11);
        let b = p.apply(img.clone(), 11);
        assert_eq!(a.as_bytes(), b.as_bytes());
        assert_eq!((a.width(), a.height()), (16, 16));
        let differs = (12..20).any(|k| p.apply(img.clone(), k).as_bytes() != a.as_bytes());
        assert!(differs);
    }
}

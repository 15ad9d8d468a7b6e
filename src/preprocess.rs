//! From an image file to the tensor a model expects.
//!
//! Two crops as in the study: the whole image ("original") and a square centred on the nose
//! landmark ("nose", 150x150 px by default); and a third that normalises the face's scale
//! ("face": a square sized from the eye-to-mouth distance, centred on the landmarks), so that
//! faces small within large photos (MTFL's LFW/net training images) are framed like the tight
//! AFLW test crops. Then a resize to the model's input size and the
//! model's own scaling and layout, all taken from [`InputSpec`] (ONNX metadata or a sidecar).

use std::fmt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use image::{DynamicImage, RgbImage};
use serde::{Deserialize, Serialize};

use crate::dataset::Sample;

mod identity;
mod jpeg;
mod pixels;

pub use identity::{Description, PIXELS_VERSION};

/// Memory layout of the input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Layout {
    Nhwc,
    Nchw,
}

/// The resize filter a model asks for (key `resize` of its description).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    Nearest,
    Bilinear,
    Bicubic,
    Lanczos,
}

impl Filter {
    /// The name the `resize` key takes.
    pub fn name(self) -> &'static str {
        match self {
            Filter::Nearest => "nearest",
            Filter::Bilinear => "bilinear",
            Filter::Bicubic => "bicubic",
            Filter::Lanczos => "lanczos",
        }
    }
}

impl std::str::FromStr for Filter {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "nearest" => Ok(Filter::Nearest),
            "bilinear" | "triangle" => Ok(Filter::Bilinear),
            "bicubic" | "catmullrom" => Ok(Filter::Bicubic),
            "lanczos" | "lanczos3" => Ok(Filter::Lanczos),
            other => bail!("unknown resize filter '{other}': expected nearest, bilinear, bicubic or lanczos"),
        }
    }
}

/// How to turn pixels into the model's input: value = (pixel / 255 - mean\[c\]) / std\[c\].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    pub layout: Layout,
    pub height: u32,
    pub width: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub resize: Filter,
}

impl InputSpec {
    /// Number of floats one image occupies in the input tensor.
    pub fn image_len(&self) -> usize {
        3 * self.height as usize * self.width as usize
    }

    /// Shape of a batch of `n` images.
    pub fn batch_shape(&self, n: usize) -> [usize; 4] {
        let (h, w) = (self.height as usize, self.width as usize);
        match self.layout {
            Layout::Nhwc => [n, h, w, 3],
            Layout::Nchw => [n, 3, h, w],
        }
    }
}

/// Which part of the image the model sees (recorded by its text, as `--crop` takes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Crop {
    /// The whole image, resized.
    Original,
    /// A `size` x `size` square centred on the nose landmark, then resized.
    Nose { size: u32 },
    /// A square of side `scale_percent` / 100 x the eye-to-mouth distance, centred on the mean
    /// of the five landmarks, then resized.
    Face { scale_percent: u32 },
}

pub const DEFAULT_NOSE_CROP: u32 = 150;
/// MTFL's AFLW test images are 3.15 eye-to-mouth distances wide (median; LFW training images
/// 5.6, net ones 4.2), so this frames every face about as the test faces are framed.
pub const DEFAULT_FACE_SCALE_PERCENT: u32 = 320;

impl std::str::FromStr for Crop {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "original" => Ok(Crop::Original),
            "nose" => Ok(Crop::Nose { size: DEFAULT_NOSE_CROP }),
            "face" => Ok(Crop::Face { scale_percent: DEFAULT_FACE_SCALE_PERCENT }),
            _ => {
                if let Some(Ok(size)) = s.strip_prefix("nose:").map(str::parse::<u32>) {
                    if size > 0 {
                        return Ok(Crop::Nose { size });
                    }
                }
                if let Some(Ok(scale)) = s.strip_prefix("face:").map(str::parse::<f32>) {
                    if scale.is_finite() && scale > 0.0 && scale < 100.0 {
                        return Ok(Crop::Face { scale_percent: (scale * 100.0).round() as u32 });
                    }
                }
                bail!("unknown crop '{s}': expected original, nose, nose:SIZE, face or face:SCALE (eye-to-mouth distances)")
            }
        }
    }
}

impl From<Crop> for String {
    fn from(c: Crop) -> String {
        c.to_string()
    }
}

impl TryFrom<String> for Crop {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Crop> {
        s.parse()
    }
}

impl fmt::Display for Crop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Crop::Original => write!(f, "original"),
            Crop::Nose { size } => write!(f, "nose:{size}"),
            Crop::Face { scale_percent } => write!(f, "face:{}", *scale_percent as f32 / 100.0),
        }
    }
}

/// Everything that decides the pixels fed to the model; recorded in every cache it produces.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    pub crop: Crop,
    pub input: InputSpec,
}

impl Preprocess {
    /// The complete description recorded in every cache, head and exported model: two of
    /// them share it only if their inputs are identical (JSON of [`Description`]).
    pub fn describe(&self) -> String {
        Description::of(self).to_json()
    }

    /// The crop named by a [`Preprocess::describe`] text (how heads and exported models know
    /// which crop their features came from).
    pub fn crop_of(description: &str) -> Result<Crop> {
        Ok(Description::parse(description)?.crop)
    }

    /// Decodes, crops, resizes and scales one image into `out` (length `input.image_len()`);
    /// returns the crop window in the image's own pixels.
    pub fn load_into(&self, sample: &Sample, out: &mut [f32]) -> Result<Window> {
        let (w, h) = (self.input.width, self.input.height);
        let kept = std::cell::Cell::new(None);
        let window = |iw, ih| {
            let win = window(self.crop, sample, iw, ih)?;
            kept.set(Some(Window::from(win)));
            Ok(win)
        };
        let source = pixels::decode_window(&sample.path, window, (w, h))?;
        let resized = pixels::resize(source, (w, h), self.input.resize).with_context(|| format!("image {}", sample.path.display()))?;
        write_tensor(&resized, &self.input, out);
        Ok(kept.get().expect("the decoder asks for the window"))
    }
}

/// A crop window in an image's own pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
}

impl From<(u32, u32, u32, u32)> for Window {
    fn from((x, y, w, h): (u32, u32, u32, u32)) -> Window {
        Window { x: x as f32, y: y as f32, w: w as f32, h: h as f32 }
    }
}

impl Window {
    /// MTFL landmarks (x1..x5, y1..y5, image pixels) as fractions of this window's width and
    /// height: what a landmark task regresses, whatever the crop.
    pub fn to_fractions(&self, landmarks: &[f32; 10]) -> [f32; 10] {
        std::array::from_fn(|j| if j < 5 { (landmarks[j] - self.x) / self.w } else { (landmarks[j] - self.y) / self.h })
    }

    /// Fractions of the window back to image pixels.
    pub fn to_pixels(&self, fractions: &[f32]) -> [f32; 10] {
        std::array::from_fn(|j| if j < 5 { self.x + fractions[j] * self.w } else { self.y + fractions[j] * self.h })
    }
}

/// Largest side and decoder allocation accepted: a face photo is far below both, while a
/// "decompression bomb" (a small file declaring a huge image) is refused before it allocates.
pub const MAX_SIDE: u32 = 16_384;
pub const MAX_DECODE_BYTES: u64 = 512 << 20;

/// Decodes a whole image at full size, with the decoders of [`Preprocess::load_into`]
/// (libjpeg-turbo for JPEGs, as Pillow and most libraries decode them).
pub fn decode_whole(path: &Path) -> Result<RgbImage> {
    // No window is ever larger than the image, so no DCT scaling is chosen.
    Ok(pixels::decode_window(path, |w, h| Ok((0, 0, w, h)), (MAX_SIDE + 1, MAX_SIDE + 1))?.rgb)
}

/// The file's bytes; a JPEG cut short is refused here, whichever decoder follows.
fn read_image_file(path: &Path) -> Result<Vec<u8>> {
    let data = std::fs::read(path).with_context(|| format!("cannot open image {}", path.display()))?;
    if let Some(reason) = jpeg::missing_end(&data) {
        bail!("cannot decode image {}: {reason}", path.display());
    }
    Ok(data)
}

fn too_large(path: &Path, why: impl fmt::Display) -> anyhow::Error {
    anyhow::anyhow!(
        "image {} is too large to decode safely ({why}; limits {MAX_SIDE}x{MAX_SIDE} px, {} MiB): a decompression bomb?",
        path.display(),
        MAX_DECODE_BYTES >> 20
    )
}

fn decode_with_image_crate(path: &Path, data: Vec<u8>) -> Result<RgbImage> {
    let mut reader =
        image::ImageReader::new(std::io::Cursor::new(data)).with_guessed_format().with_context(|| format!("cannot read image {}", path.display()))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let img: DynamicImage = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => too_large(path, &e),
        other => anyhow::Error::new(other).context(format!("cannot decode image {}", path.display())),
    })?;
    Ok(img.into_rgb8())
}

/// The crop window (x, y, width, height) for `crop` on an image of `w` x `h`.
///
/// The nose window is shifted to lie inside the image rather than padded, and shrinks to the
/// image where the image is smaller than the window, so the model never sees invented pixels.
pub fn crop_window(crop: Crop, w: u32, h: u32, nose: Option<(f32, f32)>) -> Result<(u32, u32, u32, u32)> {
    let size = match crop {
        Crop::Original => return Ok((0, 0, w, h)),
        Crop::Nose { size } => size,
        Crop::Face { .. } => bail!("crop {crop} is placed from all five landmarks: use face_window"),
    };
    let Some((nx, ny)) = nose else { bail!("crop {crop} needs landmarks, and this sample has none") };
    if !(0.0..=w as f32).contains(&nx) || !(0.0..=h as f32).contains(&ny) {
        bail!("nose landmark ({nx}, {ny}) lies outside the {w}x{h} image");
    }
    Ok(square_inside(size, (nx, ny), w, h))
}

/// The face window (x, y, width, height) on an image of `w` x `h` with MTFL `landmarks`
/// (x1..x5, y1..y5: eyes, nose, mouth corners), for `Crop::Face { scale_percent }`.
pub fn face_window(scale_percent: u32, w: u32, h: u32, landmarks: Option<[f32; 10]>) -> Result<(u32, u32, u32, u32)> {
    let Some(l) = landmarks else { bail!("crop face needs landmarks, and this sample has none") };
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    let (cx, cy) = (mean(&l[..5]), mean(&l[5..]));
    if !(0.0..=w as f32).contains(&cx) || !(0.0..=h as f32).contains(&cy) {
        bail!("landmark centre ({cx}, {cy}) lies outside the {w}x{h} image");
    }
    let eyes = ((l[0] + l[1]) / 2.0, (l[5] + l[6]) / 2.0);
    let mouth = ((l[3] + l[4]) / 2.0, (l[8] + l[9]) / 2.0);
    let distance = (mouth.0 - eyes.0).hypot(mouth.1 - eyes.1);
    let size = (distance * scale_percent as f32 / 100.0).round().max(1.0) as u32;
    Ok(square_inside(size, (cx, cy), w, h))
}

/// A `size` square centred on `centre`, shifted inside the image and shrunk to it per axis.
fn square_inside(size: u32, (cx, cy): (f32, f32), w: u32, h: u32) -> (u32, u32, u32, u32) {
    let axis = |centre: f32, extent: u32| -> (u32, u32) {
        let len = size.min(extent);
        let start = (centre - len as f32 / 2.0).round().clamp(0.0, (extent - len) as f32) as u32;
        (start, len)
    };
    let (x, cw) = axis(cx, w);
    let (y, ch) = axis(cy, h);
    (x, y, cw, ch)
}

/// The window of `sample` that `crop` keeps, on its image of `w` x `h`.
fn window(crop: Crop, sample: &Sample, w: u32, h: u32) -> Result<(u32, u32, u32, u32)> {
    let window = match crop {
        Crop::Face { scale_percent } => face_window(scale_percent, w, h, sample.landmarks),
        _ => crop_window(crop, w, h, sample.nose()),
    };
    window.with_context(|| format!("image {}", sample.path.display()))
}

/// Scales pixels and writes them in the model's layout.
pub fn write_tensor(img: &RgbImage, spec: &InputSpec, out: &mut [f32]) {
    let (w, h) = (spec.width as usize, spec.height as usize);
    debug_assert_eq!(out.len(), 3 * w * h);
    // Precomputed per channel so the inner loop is one multiply-add: (p/255 - m)/s = p*a + b.
    let a: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * spec.std[c]));
    let b: [f32; 3] = std::array::from_fn(|c| -spec.mean[c] / spec.std[c]);
    let raw = img.as_raw();
    match spec.layout {
        Layout::Nhwc => {
            for (i, (o, &p)) in out.iter_mut().zip(raw.iter()).enumerate() {
                let c = i % 3;
                *o = p as f32 * a[c] + b[c];
            }
        }
        Layout::Nchw => {
            let plane = w * h;
            for (i, px) in raw.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    out[c * plane + i] = px[c] as f32 * a[c] + b[c];
                }
            }
        }
    }
}

//! Seeded random distortions of training images, after TensorFlow's retrain.py
//! (`--flip_left_right`, `--random_crop`, `--random_scale`, `--random_brightness`).
//!
//! They work on the model-ready tensor (already cropped, resized and scaled by
//! [`crate::preprocess`]), so training can decode every image once and distort a copy per epoch.
//! Every draw comes from `seed` alone: the same (seed, image) gives the same pixels on every
//! machine and on a resumed run.

use anyhow::{ensure, Result};

use crate::preprocess::{InputSpec, Layout};

/// Which distortions to apply; percentages as in retrain.py (0 = off). A field that a file
/// lacks reads as off.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Distortions {
    /// Mirror left-right with probability 1/2.
    pub flip: bool,
    /// Margin around the kept window: the window side is the image side / (1 + crop%).
    pub crop_percent: f32,
    /// Random zoom: the window side is further divided by U[1, 1 + scale%].
    pub scale_percent: f32,
    /// Pixel values multiplied by U[1 - b%, 1 + b%], clamped to the valid range.
    pub brightness_percent: f32,
}

/// The random numbers one image needs, drawn in a fixed order whatever is switched on, so
/// switching one distortion on or off never changes the draws of another.
struct Draws {
    flip: bool,
    zoom: f32,
    x: f32,
    y: f32,
    brightness: f32,
}

impl Draws {
    fn new(seed: u64) -> Self {
        let mut rng = crate::rng::Rng::new(seed);
        let mut unit = || rng.next_f32();
        Draws { flip: unit() < 0.5, zoom: unit(), x: unit(), y: unit(), brightness: unit() }
    }
}

impl Distortions {
    /// Whether no distortion is on (training images are then used as they are).
    pub fn is_off(&self) -> bool {
        !self.flip && !self.resamples() && self.brightness_percent == 0.0
    }

    /// Refuses percentages that make no sense (negative, or brightness that can reach zero).
    pub fn check(&self) -> Result<()> {
        let all = [self.crop_percent, self.scale_percent, self.brightness_percent];
        ensure!(all.iter().all(|p| p.is_finite() && *p >= 0.0), "distortion percentages must be >= 0, got {}", self.describe());
        ensure!(self.brightness_percent < 100.0, "--random-brightness must be below 100, got {}", self.brightness_percent);
        Ok(())
    }

    /// e.g. "flip,crop=10,scale=10,brightness=10", or "none".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.flip {
            parts.push("flip".to_string());
        }
        for (name, p) in [("crop", self.crop_percent), ("scale", self.scale_percent), ("brightness", self.brightness_percent)] {
            if p != 0.0 {
                parts.push(format!("{name}={p}"));
            }
        }
        if parts.is_empty() {
            "none".to_string()
        } else {
            parts.join(",")
        }
    }

    /// Distorts one model-ready image tensor in place (layout/size/mean/std from `spec`),
    /// deterministically from `seed`.
    pub fn apply(&self, image: &mut [f32], spec: &InputSpec, seed: u64) {
        assert_eq!(image.len(), spec.image_len(), "image tensor does not match the input spec");
        if self.is_off() {
            return;
        }
        let draws = Draws::new(seed);
        if self.resamples() {
            let window = self.window(spec, &draws);
            resample(image, spec, window, self.flips(&draws));
        } else if self.flips(&draws) {
            mirror(image, spec);
        }
        if self.brightness_percent != 0.0 {
            let b = self.brightness_percent / 100.0;
            scale_brightness(image, spec, 1.0 - b + 2.0 * b * draws.brightness);
        }
    }

    /// Whether [`Distortions::apply`] mirrors the image of `seed` (its labels then become the
    /// mirror's: `train::data::LabelMirror`).
    pub fn mirrors(&self, seed: u64) -> bool {
        self.flips(&Draws::new(seed))
    }

    /// The one flip decision that pixels, landmarks and labels all follow.
    fn flips(&self, draws: &Draws) -> bool {
        self.flip && draws.flip
    }

    /// Moves landmarks (x1..x5, y1..y5 as fractions of the image tensor's width and height)
    /// with the pixels that [`Distortions::apply`] moves for the same `seed`: into the
    /// resampled window, and mirrored (left and right eyes and mouth corners swapped) by a flip.
    pub fn move_landmarks(&self, points: &mut [f32], spec: &InputSpec, seed: u64) {
        assert_eq!(points.len(), 10, "landmarks are x1..x5, y1..y5");
        if !self.flip && !self.resamples() {
            return;
        }
        let draws = Draws::new(seed);
        if self.resamples() {
            let win = self.window(spec, &draws);
            let (sw, sh) = (spec.width as f32, spec.height as f32);
            for j in 0..5 {
                points[j] = (points[j] * sw - win.x) / win.w;
                points[j + 5] = (points[j + 5] * sh - win.y) / win.h;
            }
        }
        if self.flips(&draws) {
            mirror_landmarks(points);
        }
    }

    fn resamples(&self) -> bool {
        self.crop_percent != 0.0 || self.scale_percent != 0.0
    }

    /// The source window (x, y, width, height) in pixels, as retrain.py's "enlarge by
    /// margin x zoom, then cut a random input-sized square" seen from the original image.
    fn window(&self, spec: &InputSpec, d: &Draws) -> Window {
        let margin = 1.0 + self.crop_percent / 100.0;
        let zoom = 1.0 + self.scale_percent / 100.0 * d.zoom;
        let (w, h) = (spec.width as f32 / (margin * zoom), spec.height as f32 / (margin * zoom));
        Window { x: d.x * (spec.width as f32 - w), y: d.y * (spec.height as f32 - h), w, h }
    }
}

struct Window {
    x: f32,
    y: f32,
    w: f32,
    h: f32,
}

/// Offsets of one step along channel, row and column in one image tensor (computed once per
/// image: the inner loops stay free of layout branches).
#[derive(Clone, Copy)]
struct Strides {
    channel: usize,
    row: usize,
    column: usize,
}

impl Strides {
    fn of(spec: &InputSpec) -> Self {
        let (h, w) = (spec.height as usize, spec.width as usize);
        match spec.layout {
            Layout::Nhwc => Strides { channel: 1, row: w * 3, column: 3 },
            Layout::Nchw => Strides { channel: h * w, row: w, column: 1 },
        }
    }

    fn at(&self, c: usize, y: usize, x: usize) -> usize {
        c * self.channel + y * self.row + x * self.column
    }
}

/// Landmarks (x1..x5, y1..y5 as fractions of the image) of the image mirrored left to right:
/// x becomes 1 - x, and the left and right eyes and mouth corners trade places.
pub fn mirror_landmarks(points: &mut [f32]) {
    for x in &mut points[..5] {
        *x = 1.0 - *x;
    }
    // MTFL order: left eye, right eye, nose, left mouth corner, right mouth corner
    for (a, b) in [(0, 1), (3, 4)] {
        points.swap(a, b);
        points.swap(a + 5, b + 5);
    }
}

/// One image tensor of `spec`, mirrored left to right in place.
pub fn mirror(image: &mut [f32], spec: &InputSpec) {
    let (h, w, s) = (spec.height as usize, spec.width as usize, Strides::of(spec));
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w / 2 {
                image.swap(s.at(c, y, x), s.at(c, y, w - 1 - x));
            }
        }
    }
}

/// Source coordinate and the two neighbours with their weights, for output pixel `o`
/// (pixel centres aligned, as image resizers do), clamped at the border.
fn taps(o: usize, start: f32, step: f32, extent: usize) -> (usize, usize, f32) {
    let s = (start + (o as f32 + 0.5) * step - 0.5).clamp(0.0, (extent - 1) as f32);
    let lo = s.floor() as usize;
    (lo, (lo + 1).min(extent - 1), s - lo as f32)
}

/// Bilinear resample of `window` back to the full size, mirrored if `flip`. Linear in the
/// values, so it works on normalised values as well as on raw pixels.
fn resample(image: &mut [f32], spec: &InputSpec, window: Window, flip: bool) {
    let (h, w, s) = (spec.height as usize, spec.width as usize, Strides::of(spec));
    let source = image.to_vec();
    let xs: Vec<_> = (0..w).map(|x| taps(x, window.x, window.w / w as f32, w)).collect();
    for y in 0..h {
        let (y0, y1, fy) = taps(y, window.y, window.h / h as f32, h);
        for x in 0..w {
            let (x0, x1, fx) = xs[if flip { w - 1 - x } else { x }];
            for c in 0..3 {
                let at = |yy, xx| source[s.at(c, yy, xx)];
                let top = at(y0, x0) + (at(y0, x1) - at(y0, x0)) * fx;
                let bottom = at(y1, x0) + (at(y1, x1) - at(y1, x0)) * fx;
                image[s.at(c, y, x)] = top + (bottom - top) * fy;
            }
        }
    }
}

/// Multiplies the raw pixel value (pixel / 255, in [0, 1]) by `factor` and clamps it there.
fn scale_brightness(image: &mut [f32], spec: &InputSpec, factor: f32) {
    let (h, w, s) = (spec.height as usize, spec.width as usize, Strides::of(spec));
    for c in 0..3 {
        let (mean, std) = (spec.mean[c], spec.std[c]);
        for y in 0..h {
            for x in 0..w {
                let v = &mut image[s.at(c, y, x)];
                let raw = (*v * std + mean) * factor;
                *v = (raw.clamp(0.0, 1.0) - mean) / std;
            }
        }
    }
}

#[cfg(test)]
mod tests;

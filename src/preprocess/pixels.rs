//! Decoding at the size the crop needs, and resizing the crop window to the model input.
//!
//! A 12-megapixel photo for a 299x299 model need not be decoded at full size: libjpeg-turbo
//! scales by n/8 inside the inverse DCT, nearly for free, so a JPEG is decoded at the smallest
//! such scale that still leaves the crop window at least as large as the model input, and the
//! rest of the way is one SIMD convolution (fast_image_resize) over the window, whose corners
//! may then fall between decoded pixels. MTFL's images (250x250 and smaller) decode at full
//! size. Other formats, and JPEGs libjpeg-turbo refuses (CMYK, or data it warns about), go
//! through the image crate as before.

use std::cell::RefCell;
use std::path::Path;

use anyhow::{anyhow, Result};
use fast_image_resize::{images::Image, images::ImageRef, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use turbojpeg::{Decompressor, PixelFormat, ScalingFactor};

use super::{decode_with_image_crate, read_image_file, too_large, Filter, MAX_DECODE_BYTES, MAX_SIDE};

/// A decoded image and the crop window in its pixels.
pub struct Source {
    pub rgb: RgbImage,
    /// left, top, width, height
    pub window: [f64; 4],
}

/// Decodes `path`, with `window` giving the crop window (x, y, w, h) for the full image size,
/// at the smallest scale whose window still covers `out` (width, height).
pub fn decode_window(path: &Path, window: impl Fn(u32, u32) -> Result<(u32, u32, u32, u32)>, out: (u32, u32)) -> Result<Source> {
    let data = read_image_file(path)?;
    if data.starts_with(&[0xFF, 0xD8]) {
        if let Some(source) = decode_jpeg_scaled(path, &data, &window, out)? {
            return Ok(source);
        }
    }
    let rgb = decode_with_image_crate(path, data)?;
    let (x, y, w, h) = window(rgb.width(), rgb.height())?;
    Ok(Source { rgb, window: [x as f64, y as f64, w as f64, h as f64] })
}

thread_local! {
    static DECOMPRESSOR: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
}

/// `None` where libjpeg-turbo cannot decode the file (the image crate then tries).
fn decode_jpeg_scaled(path: &Path, data: &[u8], window: &dyn Fn(u32, u32) -> Result<(u32, u32, u32, u32)>, out: (u32, u32)) -> Result<Option<Source>> {
    DECOMPRESSOR.with_borrow_mut(|slot| {
        let tj = match slot {
            Some(tj) => tj,
            None => slot.insert(Decompressor::new().map_err(|e| anyhow!("libjpeg-turbo: {e}"))?),
        };
        let Ok(header) = tj.read_header(data) else { return Ok(None) };
        if header.width > MAX_SIDE as usize || header.height > MAX_SIDE as usize {
            return Err(too_large(path, format!("{}x{} px", header.width, header.height)));
        }
        let (x, y, w, h) = window(header.width as u32, header.height as u32)?;
        let factor = scale_for((w, h), out);
        let (sw, sh) = (factor.scale(header.width), factor.scale(header.height));
        if (sw * sh * 3) as u64 > MAX_DECODE_BYTES {
            return Err(too_large(path, format!("{sw}x{sh} px decoded")));
        }
        let mut pixels = vec![0u8; sw * sh * 3];
        let image = turbojpeg::Image { pixels: pixels.as_mut_slice(), width: sw, pitch: sw * 3, height: sh, format: PixelFormat::RGB };
        let decoded = tj.set_scaling_factor(factor).and_then(|()| tj.decompress(data, image));
        if decoded.is_err() {
            return Ok(None);
        }
        let rgb = RgbImage::from_raw(sw as u32, sh as u32, pixels).expect("buffer sized for the image");
        // The scaled image is ceil(side x n / 8); the window scales by the same factor.
        let s = factor.num() as f64 / factor.denom() as f64;
        let window = [x as f64 * s, y as f64 * s, (w as f64 * s).min(sw as f64 - x as f64 * s), (h as f64 * s).min(sh as f64 - y as f64 * s)];
        Ok(Some(Source { rgb, window }))
    })
}

/// The smallest n/8 (n = 1..8, kept reduced by turbojpeg: 2/8 is 1/4) that keeps a `window`
/// (w, h) at least `out` in both sides.
fn scale_for((w, h): (u32, u32), (ow, oh): (u32, u32)) -> ScalingFactor {
    let covers = |f: &ScalingFactor| w as usize * f.num() >= ow as usize * f.denom() && h as usize * f.num() >= oh as usize * f.denom();
    (1..=8).map(|n| ScalingFactor::new(n, 8)).find(covers).unwrap_or(ScalingFactor::ONE)
}

/// The window of `source` resized to `out` with `filter`; the pixels as they are where the
/// window is the whole image and already `out`.
pub fn resize(source: Source, (ow, oh): (u32, u32), filter: Filter) -> Result<RgbImage> {
    let (w, h) = source.rgb.dimensions();
    if source.window == [0.0, 0.0, ow as f64, oh as f64] && (w, h) == (ow, oh) {
        return Ok(source.rgb);
    }
    let src = ImageRef::new(w, h, source.rgb.as_raw(), PixelType::U8x3).map_err(|e| anyhow!("resize source {w}x{h}: {e}"))?;
    let mut dst = Image::new(ow, oh, PixelType::U8x3);
    let [left, top, cw, ch] = source.window;
    let options = ResizeOptions::new().resize_alg(algorithm(filter)).crop(left, top, cw, ch);
    RESIZER.with_borrow_mut(|r| r.resize(&src, &mut dst, &options)).map_err(|e| anyhow!("resize {w}x{h} window {:?} to {ow}x{oh}: {e}", source.window))?;
    Ok(RgbImage::from_raw(ow, oh, dst.into_vec()).expect("buffer sized for the image"))
}

fn algorithm(filter: Filter) -> ResizeAlg {
    match filter {
        Filter::Nearest => ResizeAlg::Nearest,
        Filter::Bilinear => ResizeAlg::Convolution(FilterType::Bilinear),
        Filter::Bicubic => ResizeAlg::Convolution(FilterType::CatmullRom),
        Filter::Lanczos => ResizeAlg::Convolution(FilterType::Lanczos3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_is_the_smallest_that_keeps_the_window_at_least_the_input() {
        let n = |w, h, o| {
            let f = scale_for((w, h), (o, o));
            8 * f.num() / f.denom()
        };
        assert_eq!(n(4000, 3000, 299), 1, "3000 / 8 = 375 >= 299");
        assert_eq!(n(2000, 1500, 299), 2, "1500 x 1/8 = 187 < 299 <= 375");
        assert_eq!(n(250, 250, 299), 8, "smaller than the input: full size");
        assert_eq!(n(299, 299, 299), 8);
        assert_eq!(n(598, 598, 299), 4);
    }
}

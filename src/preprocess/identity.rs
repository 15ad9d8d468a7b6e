//! The preprocessing a cache, head or exported model was made with, as a typed, versioned value.
//!
//! It is stored as JSON (the `preprocess` attribute of a cache, the key of the same name in
//! an exported model) and compared whole: a cache is reused only by a run whose description is
//! equal. `version` names the pixel pipeline itself (decoder and resizer), so changing how the
//! same file and settings turn into pixels makes every older cache different, and refused.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{Crop, InputSpec, Preprocess};

/// Bumped whenever the same file and settings give other pixels. 1 was the image crate's
/// decoder and resize (a text description); 2 is libjpeg-turbo with DCT-domain scaling and
/// fast_image_resize.
pub const PIXELS_VERSION: u32 = 2;

/// How the pixels of version 2 are made (recorded for a reader of the cache; `version`
/// decides equality together with the settings).
const DECODER: &str =
    "JPEG: libjpeg-turbo, scaled by 1/8..8/8 in the DCT to the smallest size that keeps the crop at least the model input; other formats: image crate";
const RESIZER: &str = "fast_image_resize convolution over the crop window (sub-pixel after DCT scaling)";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Description {
    pub version: u32,
    pub decoder: String,
    pub resizer: String,
    /// Clamped inside the image: the model never sees invented pixels.
    pub crop: Crop,
    /// Size, filter, layout and value = (pixel / 255 - mean) / std, RGB.
    pub input: InputSpec,
}

impl Description {
    pub fn of(pre: &Preprocess) -> Description {
        Description { version: PIXELS_VERSION, decoder: DECODER.into(), resizer: RESIZER.into(), crop: pre.crop, input: pre.input.clone() }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a description serialises")
    }

    pub fn parse(text: &str) -> Result<Description> {
        serde_json::from_str(text).with_context(|| {
            format!("preprocessing '{text}' is not a retrain description of version {PIXELS_VERSION} (made by an older retrain? extract again)")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::{Filter, Layout};

    fn pre(crop: Crop) -> Preprocess {
        Preprocess { crop, input: InputSpec { layout: Layout::Nhwc, height: 299, width: 299, mean: [0.5; 3], std: [0.5; 3], resize: Filter::Bilinear } }
    }

    #[test]
    fn a_description_reads_back_equal_and_names_its_crop() {
        for crop in [Crop::Original, Crop::Nose { size: 150 }, Crop::Face { scale_percent: 320 }] {
            let text = pre(crop).describe();
            assert_eq!(Description::parse(&text).unwrap(), Description::of(&pre(crop)), "{text}");
            assert_eq!(Preprocess::crop_of(&text).unwrap(), crop);
        }
        assert_ne!(pre(Crop::Original).describe(), pre(Crop::Nose { size: 150 }).describe());
    }

    #[test]
    fn an_older_text_description_is_refused_with_its_reason() {
        let old = "crop=original (clamped inside the image); resize=299x299 bilinear (image crate); color=RGB";
        let e = format!("{:#}", Description::parse(old).unwrap_err());
        assert!(e.contains("older retrain") && e.contains("crop=original"), "{e}");
    }
}

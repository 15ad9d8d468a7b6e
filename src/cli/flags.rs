//! Flag groups that several commands share, each declared once and flattened where needed.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use retrain::augment::Distortions;
use retrain::dataset::{self, mtfl, Dataset};
use retrain::locate::Passes;
use retrain::preprocess::Crop;
use retrain::runtime::{Device, SessionConfig};

/// Where models run.
#[derive(Args)]
pub struct SessionArgs {
    /// cpu, cuda or cuda:N. CUDA never falls back to CPU.
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// Intra-op threads for ONNX Runtime [default: every core].
    #[arg(long)]
    pub threads: Option<usize>,
}

impl From<&SessionArgs> for SessionConfig {
    fn from(a: &SessionArgs) -> SessionConfig {
        SessionConfig { intra_threads: a.threads, ..SessionConfig::new(a.device) }
    }
}

/// How images are decoded, and whether progress is shown.
#[derive(Args)]
pub struct DecodeArgs {
    /// Threads decoding and resizing images [default: every core].
    #[arg(long)]
    pub decode_threads: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// What an unreadable image does.
#[derive(Args)]
pub struct StrictArgs {
    /// Stop at the first unreadable image instead of skipping it.
    #[arg(long)]
    pub strict: bool,
}

/// The part of each image the backbone sees.
#[derive(Args)]
pub struct CropArgs {
    /// original (whole image), nose (150x150 around the nose landmark; nose:SIZE for another
    /// size) or face (a square 3.2 eye-to-mouth distances wide on the landmarks; face:SCALE).
    #[arg(long, default_value = "original")]
    pub crop: Crop,
}

/// A data set: MTFL's annotation files, class folders or a label file.
#[derive(Args)]
pub struct DataArgs {
    /// MTFL folder (holding training.txt, testing.txt and the images).
    #[arg(long, requires = "split", conflicts_with_all = ["folders", "labels"])]
    pub mtfl: Option<PathBuf>,
    /// With --mtfl: which annotation file to read (training, testing). With --labels: only the
    /// rows whose split cell is train, val or test.
    #[arg(long, value_parser = ["training", "testing", "train", "val", "test"])]
    pub split: Option<String>,
    /// Class-folder layout instead of MTFL: DIR/<class>/*.jpg.
    #[arg(long, conflicts_with = "labels")]
    pub folders: Option<PathBuf>,
    /// A label file: CSV with a header path,ATTR,... (paths relative to its folder; optional
    /// x1..x5,y1..y5 landmark and split columns; see docs/formats.md).
    #[arg(long, value_name = "FILE.csv")]
    pub labels: Option<PathBuf>,
    /// With --labels: accept paths that lead outside the CSV's folder (`..`, symlinks, absolute).
    #[arg(long, requires = "labels")]
    pub allow_outside: bool,
}

impl DataArgs {
    pub fn given(&self) -> bool {
        self.mtfl.is_some() || self.folders.is_some() || self.labels.is_some()
    }

    pub fn load(&self) -> Result<Dataset> {
        let split = self.split.as_deref();
        match (&self.mtfl, &self.folders, &self.labels) {
            (Some(root), None, None) => match split {
                Some("train" | "val" | "test") => anyhow::bail!("--mtfl takes --split training or testing"),
                _ => mtfl::load(root, split.unwrap_or("training").parse()?),
            },
            (None, Some(root), None) => match split {
                Some(s) => anyhow::bail!("--split {s}: class folders have no splits (give each split its own folder)"),
                None => dataset::folders::load(root),
            },
            (None, None, Some(csv)) => {
                let only = match split {
                    Some("training" | "testing") => anyhow::bail!("--labels takes --split train, val or test (the file's split column)"),
                    Some(s) => Some(s.parse()?),
                    None => None,
                };
                dataset::labels::load(csv, &dataset::labels::LabelOptions { allow_outside: self.allow_outside, only })
            }
            _ => anyhow::bail!("give one data set: --mtfl DIR --split training|testing, --folders DIR or --labels FILE.csv"),
        }
    }
}

/// Random distortions of training images (off by default), as TensorFlow's retrain.py.
#[derive(Args)]
pub struct DistortionArgs {
    /// Mirror each training image left-right with probability 1/2.
    #[arg(long)]
    pub flip: bool,
    /// Random crop: keep a window whose side is the image's / (1 + P%), at a random place.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub random_crop: f32,
    /// Random zoom: shrink that window further by a factor drawn from [1, 1 + P%].
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub random_scale: f32,
    /// Multiply training pixel values by a factor drawn from [1 - P%, 1 + P%].
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub random_brightness: f32,
}

impl TryFrom<&DistortionArgs> for Distortions {
    type Error = anyhow::Error;
    fn try_from(a: &DistortionArgs) -> Result<Distortions> {
        let d = Distortions { flip: a.flip, crop_percent: a.random_crop, scale_percent: a.random_scale, brightness_percent: a.random_brightness };
        d.check()?;
        Ok(d)
    }
}

/// How a landmark model runs (predict --landmarks, export --landmarks, reproduce --beyond).
#[derive(Args)]
pub struct LocateArgs {
    /// Passes of the landmark model: the whole image, then its own crop placed from the estimate.
    #[arg(long, default_value_t = 2)]
    pub landmark_passes: usize,
    /// Do not average each pass with its run on the mirrored image (averaging is the default:
    /// it lowered the landmark error on MTFL's validation faces from 7.67% to 6.70%).
    #[arg(long)]
    pub no_landmark_mirror: bool,
}

impl From<&LocateArgs> for Passes {
    fn from(a: &LocateArgs) -> Passes {
        Passes { count: a.landmark_passes, mirror: !a.no_landmark_mirror }
    }
}

/// How images stream through a backbone (predict, reproduce).
#[derive(Args)]
pub struct StreamArgs {
    /// Images per inference call.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[command(flatten)]
    pub decode: DecodeArgs,
    #[command(flatten)]
    pub session: SessionArgs,
}

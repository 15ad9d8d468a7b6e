//! Data sets: where images are and what is known about them.
//!
//! Three layouts are read: MTFL annotation files, TensorFlow retrain.py-style class folders and
//! label files (a CSV of paths and class names). All yield [`Sample`]s; the rest of the pipeline never looks at the layout again.

pub mod folders;
pub mod labels;
pub mod mtfl;
pub mod split;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

/// The four MTFL attributes, in the column order of `/labels` in the cache.
pub const MTFL_ATTRIBUTES: [&str; 4] = ["gender", "smile", "glasses", "pose"];

/// Value stored for a label that the data set does not give.
pub const UNKNOWN_LABEL: i32 = -1;

/// One image and what the data set says about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Where to read the image.
    pub path: PathBuf,
    /// The name recorded in the cache: the path as the data set spells it, with `/` separators,
    /// byte for byte (a file name need not be UTF-8).
    pub key: OsString,
    /// One value per label column of the data set (MTFL: gender, smile, glasses, pose in MTFL coding).
    pub labels: Vec<i32>,
    /// x1..x5, y1..y5 (left eye, right eye, nose, left and right mouth corner), when annotated.
    pub landmarks: Option<[f32; 10]>,
}

impl Sample {
    /// The key as text, for messages and tables: lossy where it is not UTF-8.
    pub fn name(&self) -> Cow<'_, str> {
        self.key.to_string_lossy()
    }

    /// The nose landmark (x3, y3), when the sample has landmarks.
    pub fn nose(&self) -> Option<(f32, f32)> {
        self.landmarks.map(|l| (l[2], l[7]))
    }
}

/// A loaded data set: samples plus the names of its label columns.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Human-readable identity of the source, recorded in the cache (`mtfl:training`, `folders:/x`).
    pub source: String,
    /// Names of the label columns, e.g. MTFL's four attributes or `class` for folders.
    pub label_columns: Vec<String>,
    /// For class folders: the class names, index = label value.
    pub class_names: Vec<String>,
    /// For label files: each label column's class names, index = label value (empty for the
    /// other layouts).
    pub column_class_names: BTreeMap<String, Vec<String>>,
    /// For label files with a `split` column: each sample's `split` cell (`None`: empty), in
    /// the order of `samples`; empty when the source has no such column.
    pub parts: Vec<Option<labels::Part>>,
    pub samples: Vec<Sample>,
    /// Lines of the listing that could not be used; the rest is kept.
    pub problems: Vec<Skipped>,
}

/// An image of a data set that could not be used, or a line of its list that names none:
/// reported, left out, and recorded in the cache's `/skipped`.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    /// The image as the data set names it ([`Sample::key`]); for a line of the list, `LIST:line N`.
    pub path: PathBuf,
    /// Why, the file named.
    pub reason: String,
    /// Its position in the image list; `None` for a line of the list.
    pub position: Option<usize>,
}

impl Skipped {
    /// Image `position` of the list, `sample`.
    pub fn image(sample: &Sample, position: usize, reason: String) -> Skipped {
        Skipped { path: PathBuf::from(&sample.key), reason, position: Some(position) }
    }

    /// Line `line` of the list file `list`.
    pub fn line(list: &Path, line: usize, reason: String) -> Skipped {
        let mut path = list.as_os_str().to_owned();
        path.push(format!(":line {line}"));
        Skipped { path: path.into(), reason, position: None }
    }
}

/// `PATH: reason`, as every command reports it.
impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

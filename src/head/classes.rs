//! What the label codes of an attribute mean, and the rows of a cache that have one.

use std::ffi::OsString;

use anyhow::{bail, Result};
use ndarray::{Array2, Axis};

use crate::cache::Cache;

/// MTFL's codes and the names retrain gives them (also the CSV column names of `predict`).
const MTFL_CLASSES: [(&str, &[(i32, &str)]); 4] = [
    ("gender", &[(1, "male"), (2, "female")]),
    ("smile", &[(1, "smiling"), (2, "not_smiling")]),
    ("glasses", &[(1, "glasses"), (2, "no_glasses")]),
    ("pose", &[(1, "left_profile"), (2, "left"), (3, "frontal"), (4, "right"), (5, "right_profile")]),
];

/// Classes that a left-right mirror of the image turns into each other (every other class of
/// every attribute stays what it is): a head turned left seen in a mirror is turned right.
const MTFL_MIRRORED: [(&str, &[(i32, i32)]); 1] = [("pose", &[(1, 5), (2, 4)])];

/// The classes of one attribute: output column k of a head is class k.
#[derive(Debug, Clone, PartialEq)]
pub struct Classes {
    pub attribute: String,
    /// Names, e.g. `male`, `female`.
    pub labels: Vec<String>,
    /// The code of each class in the cache's `/labels` column.
    pub codes: Vec<i32>,
}

impl Classes {
    /// A label file's columns from the cache's `column_class_names`; MTFL attributes by name;
    /// class folders (`class` column) from the cache's class names.
    pub fn of(cache: &Cache, attribute: &str) -> Result<Classes> {
        cache.label_column(attribute)?;
        if let Some(names) = cache.column_class_names.get(attribute) {
            if names.is_empty() {
                bail!("attribute '{attribute}': no row of the label file gives it a class");
            }
            return Ok(Classes { attribute: attribute.to_string(), labels: names.clone(), codes: (0..names.len() as i32).collect() });
        }
        if let Some(classes) = Self::mtfl(attribute) {
            return Ok(classes);
        }
        if cache.class_names.is_empty() {
            bail!("attribute '{attribute}': the cache names no classes for it");
        }
        Ok(Classes { attribute: attribute.to_string(), labels: cache.class_names.clone(), codes: (0..cache.class_names.len() as i32).collect() })
    }

    /// An MTFL attribute's classes (`None` for other names).
    pub fn mtfl(attribute: &str) -> Option<Classes> {
        let (_, table) = MTFL_CLASSES.iter().find(|(a, _)| *a == attribute)?;
        Some(Classes {
            attribute: attribute.to_string(),
            labels: table.iter().map(|(_, n)| n.to_string()).collect(),
            codes: table.iter().map(|(c, _)| *c).collect(),
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Class index of each class's mirror image (the `--flip` distortion moves labels with it).
    /// Classes not named by `MTFL_MIRRORED` stay themselves, as class folders do.
    pub fn mirrored(&self) -> Vec<usize> {
        let pairs = MTFL_MIRRORED.iter().find(|(a, _)| *a == self.attribute).map_or(&[][..], |(_, p)| *p);
        (0..self.len())
            .map(|k| {
                let code = self.codes[k];
                let partner = pairs.iter().find_map(|&(a, b)| (a == code).then_some(b).or((b == code).then_some(a)));
                partner.and_then(|c| self.index_of(c)).unwrap_or(k)
            })
            .collect()
    }

    /// Output column of a label code, `None` for unknown (-1) or foreign codes.
    pub fn index_of(&self, code: i32) -> Option<usize> {
        self.codes.iter().position(|&c| c == code)
    }
}

/// The rows of a cache that carry a known label for one attribute.
#[derive(Debug, Clone)]
pub struct Labeled {
    pub x: Array2<f32>,
    /// Class index per row (see [`Classes`]).
    pub y: Vec<usize>,
    /// The images' names, byte for byte.
    pub paths: Vec<OsString>,
    /// Rows left out because their label was unknown.
    pub unlabeled: usize,
}

impl Labeled {
    pub fn from_cache(cache: &Cache, classes: &Classes) -> Result<Labeled> {
        let column = cache.labels.column(cache.label_column(&classes.attribute)?);
        let (keep, y): (Vec<usize>, Vec<usize>) = column.iter().enumerate().filter_map(|(i, &code)| Some((i, classes.index_of(code)?))).unzip();
        Ok(Labeled {
            x: cache.features.select(Axis(0), &keep),
            y,
            paths: keep.iter().map(|&i| cache.paths[i].clone()).collect(),
            unlabeled: column.len() - keep.len(),
        })
    }

    /// Rows per class.
    pub fn counts(&self, n_classes: usize) -> Vec<usize> {
        let mut counts = vec![0; n_classes];
        for &c in &self.y {
            counts[c] += 1;
        }
        counts
    }

    /// The rows at `index`, in that order.
    pub fn select(&self, index: &[usize]) -> Labeled {
        Labeled {
            x: self.x.select(Axis(0), index),
            y: index.iter().map(|&i| self.y[i]).collect(),
            paths: index.iter().map(|&i| self.paths[i].clone()).collect(),
            unlabeled: 0,
        }
    }
}

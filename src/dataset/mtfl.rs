//! The MTFL annotation format (training.txt / testing.txt).
//!
//! Each line: `path x1..x5 y1..y5 gender smile glasses pose`. The real files have CRLF line
//! ends, a leading space on most lines, Windows backslash paths in training.txt and blank lines
//! at the end; all of that is accepted. A malformed line (too few columns, a non-number, an
//! unknown label code) is reported with file and line and left out; the other lines are kept.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{Dataset, Sample, Skipped, MTFL_ATTRIBUTES};

/// Valid codes per attribute: gender 1/2, smile 1/2, glasses 1/2, pose 1..5.
const LABEL_RANGES: [(i32, i32); 4] = [(1, 2), (1, 2), (1, 2), (1, 5)];
const COLUMNS: usize = 1 + 10 + 4;

/// Which annotation file of MTFL to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Training,
    Testing,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Training => "training",
            Split::Testing => "testing",
        }
    }

    /// The annotation file of this split in the MTFL folder `root`.
    pub fn annotations(self, root: &Path) -> PathBuf {
        root.join(format!("{}.txt", self.name()))
    }
}

impl std::str::FromStr for Split {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "training" | "train" => Ok(Split::Training),
            "testing" | "test" => Ok(Split::Testing),
            _ => bail!("unknown MTFL split '{s}': expected training or testing"),
        }
    }
}

/// Reads `root/<split>.txt`, resolving image paths against `root`.
pub fn load(root: &Path, split: Split) -> Result<Dataset> {
    let file = split.annotations(root);
    let text = fs::read(&file)
        .with_context(|| format!("cannot read MTFL annotations {} (is --mtfl the folder holding training.txt and testing.txt?)", file.display()))?;
    let text = String::from_utf8_lossy(&text);
    let parsed = parse(&text, root);
    let problems = parsed.problems.into_iter().map(|p| Skipped::line(&file, p.line, p.reason)).collect();
    Ok(Dataset {
        source: format!("mtfl:{}", split.name()),
        label_columns: MTFL_ATTRIBUTES.iter().map(|s| s.to_string()).collect(),
        class_names: Vec::new(),
        column_class_names: Default::default(),
        parts: Vec::new(),
        samples: parsed.samples,
        problems,
    })
}

/// The good lines as samples, and a [`Problem`] for each line left out.
#[derive(Debug, Default)]
pub struct Parsed {
    pub samples: Vec<Sample>,
    pub problems: Vec<Problem>,
}

/// A line left out, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Counted from 1.
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// Parses annotation text; problems carry the 1-based line number.
pub fn parse(text: &str, root: &Path) -> Parsed {
    let mut parsed = Parsed::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match parse_line(line, root) {
            Ok(sample) => parsed.samples.push(sample),
            Err(e) => parsed.problems.push(Problem { line: i + 1, reason: format!("{e:#} in '{}'", shorten(line)) }),
        }
    }
    parsed
}

fn parse_line(line: &str, root: &Path) -> Result<Sample> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() != COLUMNS {
        bail!("expected {COLUMNS} columns (path, 10 landmark coordinates, gender, smile, glasses, pose), found {}", fields.len());
    }
    let key = fields[0].replace('\\', "/");
    let mut landmarks = [0f32; 10];
    for (k, field) in fields[1..11].iter().enumerate() {
        let v: f32 = field.parse().map_err(|_| anyhow::anyhow!("landmark column {} is not a number: '{field}'", k + 2))?;
        if !v.is_finite() {
            bail!("landmark column {} is not finite: '{field}'", k + 2);
        }
        landmarks[k] = v;
    }
    let mut labels = Vec::with_capacity(4);
    for (k, field) in fields[11..].iter().enumerate() {
        let (lo, hi) = LABEL_RANGES[k];
        let name = MTFL_ATTRIBUTES[k];
        let v: i32 = field.parse().map_err(|_| anyhow::anyhow!("{name} (column {}) is not an integer: '{field}'", k + 12))?;
        if v < lo || v > hi {
            bail!("{name} (column {}) has unknown code {v}: expected {lo}..={hi}", k + 12);
        }
        labels.push(v);
    }
    Ok(Sample { path: root.join(&key), key: key.into(), labels, landmarks: Some(landmarks) })
}

fn shorten(line: &str) -> String {
    const MAX: usize = 80;
    match line.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line.to_string(),
    }
}

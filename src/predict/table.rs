//! Per-image predictions as CSV or JSON, written by `predict` and by `eval --predictions`.
//!
//! Columns: `path`, then for each attribute its predicted label (`gender`: male/female) and one
//! probability per class (`p_gender_male`, `p_gender_female`).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

/// An attribute and its class labels, in the order of its probabilities.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribute {
    /// The attribute's name (`gender`), the CSV's label column.
    pub name: String,
    /// Its class labels, in the order of its probabilities.
    pub labels: Vec<String>,
}

/// Predictions for a list of images.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictionTable {
    /// The attributes, in column order.
    pub attributes: Vec<Attribute>,
    /// Each row's image, as the input list named it.
    pub paths: Vec<String>,
    /// Per attribute, row-major [rows, classes].
    pub probabilities: Vec<Vec<f32>>,
    /// Per row, the landmarks a landmark model placed (`predict --landmarks`): columns
    /// x1..x5, y1..y5 in the image's pixels, empty where none was placed.
    pub landmarks: Option<Vec<Option<[f32; 10]>>>,
}

/// Names of the landmark columns.
const LANDMARK_COLUMNS: [&str; 10] = ["x1", "x2", "x3", "x4", "x5", "y1", "y2", "y3", "y4", "y5"];

impl PredictionTable {
    /// An empty table for `attributes`.
    pub fn new(attributes: Vec<Attribute>) -> Self {
        let probabilities = vec![Vec::new(); attributes.len()];
        PredictionTable { attributes, paths: Vec::new(), probabilities, landmarks: None }
    }

    /// Adds one image: `probs[a]` holds attribute a's class probabilities.
    pub fn push(&mut self, path: &str, probs: &[&[f32]]) {
        debug_assert_eq!(probs.len(), self.attributes.len());
        self.paths.push(path.to_string());
        for (column, p) in self.probabilities.iter_mut().zip(probs) {
            column.extend_from_slice(p);
        }
    }

    /// Adds landmark columns: `of(path)` gives the landmarks of each row's image.
    pub fn add_landmarks(&mut self, of: impl Fn(&str) -> Option<[f32; 10]>) {
        self.landmarks = Some(self.paths.iter().map(|p| of(p)).collect());
    }

    /// Rows (images).
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Probabilities of attribute `a` for row `i`.
    pub fn row(&self, a: usize, i: usize) -> &[f32] {
        let k = self.attributes[a].labels.len();
        &self.probabilities[a][i * k..(i + 1) * k]
    }

    /// Predicted label of attribute `a` for row `i`.
    pub fn predicted_label(&self, a: usize, i: usize) -> &str {
        &self.attributes[a].labels[self.predicted(a, i)]
    }

    /// Predicted class index of attribute `a` for row `i` (the most probable class).
    pub fn predicted(&self, a: usize, i: usize) -> usize {
        crate::head::softmax::argmax(ndarray::ArrayView1::from(self.row(a, i)))
    }

    fn header(&self) -> Vec<String> {
        let mut h = vec!["path".to_string()];
        for a in &self.attributes {
            h.push(a.name.clone());
            h.extend(a.labels.iter().map(|l| format!("p_{}_{l}", a.name)));
        }
        if self.landmarks.is_some() {
            h.extend(LANDMARK_COLUMNS.map(String::from));
        }
        h
    }

    /// The cells of row `i`, in header order.
    fn cells(&self, i: usize) -> Vec<String> {
        let mut cells = vec![self.paths[i].clone()];
        for (a, attr) in self.attributes.iter().enumerate() {
            cells.push(attr.labels[self.predicted(a, i)].clone());
            cells.extend(self.row(a, i).iter().map(|p| format!("{p:.6}")));
        }
        if let Some(all) = &self.landmarks {
            match all[i] {
                Some(points) => cells.extend(points.iter().map(|v| format!("{v:.2}"))),
                None => cells.extend(std::iter::repeat_n(String::new(), 10)),
            }
        }
        cells
    }

    /// The table as CSV: a header, then one line per image (RFC 4180 quoting).
    pub fn to_csv(&self) -> String {
        let mut s = String::new();
        let line = |cells: Vec<String>| cells.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(",");
        let _ = writeln!(s, "{}", line(self.header()));
        for i in 0..self.len() {
            let _ = writeln!(s, "{}", line(self.cells(i)));
        }
        s
    }

    /// One object per image with the CSV's column names as keys (probabilities as numbers).
    pub fn to_json(&self) -> serde_json::Value {
        let header = self.header();
        let rows = (0..self.len())
            .map(|i| {
                let object = header.iter().zip(self.cells(i)).map(|(k, v)| {
                    let value = if k.starts_with("p_") || LANDMARK_COLUMNS.contains(&k.as_str()) {
                        v.parse::<f64>().map_or(serde_json::Value::String(v.clone()), serde_json::Value::from)
                    } else {
                        serde_json::Value::String(v)
                    };
                    (k.clone(), value)
                });
                serde_json::Value::Object(object.collect())
            })
            .collect();
        serde_json::Value::Array(rows)
    }

    /// Writes JSON for a `.json` path, CSV otherwise.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text =
            if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) { serde_json::to_string_pretty(&self.to_json())? } else { self.to_csv() };
        crate::write_file(path, text)
    }
}

/// RFC 4180 quoting where needed.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_label_and_probability_columns() {
        let mut t = PredictionTable::new(vec![
            Attribute { name: "gender".into(), labels: vec!["male".into(), "female".into()] },
            Attribute { name: "smile".into(), labels: vec!["smiling".into(), "not_smiling".into()] },
        ]);
        t.push("a/1.jpg", &[&[0.25, 0.75], &[0.9, 0.1]]);
        t.push("b,2.jpg", &[&[0.6, 0.4], &[0.0, 1.0]]);
        let csv = t.to_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "path,gender,p_gender_male,p_gender_female,smile,p_smile_smiling,p_smile_not_smiling");
        assert_eq!(lines[1], "a/1.jpg,female,0.250000,0.750000,smiling,0.900000,0.100000");
        assert_eq!(lines[2], "\"b,2.jpg\",male,0.600000,0.400000,not_smiling,0.000000,1.000000");
        let json = t.to_json();
        assert_eq!(json[0]["gender"], "female");
        assert_eq!(json[1]["p_smile_not_smiling"], 1.0);

        t.add_landmarks(|p| (p == "a/1.jpg").then_some([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.5]));
        let csv = t.to_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert!(lines[0].ends_with(",p_smile_not_smiling,x1,x2,x3,x4,x5,y1,y2,y3,y4,y5"), "{}", lines[0]);
        assert!(lines[1].ends_with(",0.100000,1.00,2.00,3.00,4.00,5.00,6.00,7.00,8.00,9.00,10.50"), "{}", lines[1]);
        assert!(lines[2].ends_with(",1.000000,,,,,,,,,,"), "no landmarks: empty cells: {}", lines[2]);
        assert_eq!(t.to_json()[0]["y5"], 10.5);
    }
}

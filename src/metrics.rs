//! Classification scores as the study reports them (its Tables 3 and 4): accuracy, per-class
//! precision and recall, and the confusion matrix normalised per true class.

use serde::{Deserialize, Serialize};

/// Scores of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScores {
    pub label: String,
    /// Rows whose true class this is.
    pub support: usize,
    /// Rows predicted as this class.
    pub predicted: usize,
    /// `None` when nothing was predicted as this class (0/0).
    pub precision: Option<f64>,
    /// `None` when the class has no rows.
    pub recall: Option<f64>,
}

/// Scores of one attribute on one set of rows; read as any version wrote them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "Written")]
pub struct Metrics {
    pub labels: Vec<String>,
    pub rows: usize,
    pub accuracy: f64,
    /// Mean recall over the classes that have rows: what accuracy would be if every class had
    /// as many rows (a head that always answers a 92% majority class scores 50% on two classes).
    pub balanced_accuracy: f64,
    pub classes: Vec<ClassScores>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
    /// Each row of `confusion` divided by its sum (0 for empty rows).
    pub confusion_normalized: Vec<Vec<f64>>,
}

/// [`Metrics`] as files hold them: those from before balanced accuracy lack it, and get it
/// from their per-class recalls (which they have), not the 0 that a missing field would read as.
#[derive(Deserialize)]
struct Written {
    labels: Vec<String>,
    rows: usize,
    accuracy: f64,
    balanced_accuracy: Option<f64>,
    classes: Vec<ClassScores>,
    confusion: Vec<Vec<usize>>,
    confusion_normalized: Vec<Vec<f64>>,
}

impl From<Written> for Metrics {
    fn from(w: Written) -> Metrics {
        Metrics {
            balanced_accuracy: w.balanced_accuracy.unwrap_or_else(|| balanced(&w.classes)),
            labels: w.labels,
            rows: w.rows,
            accuracy: w.accuracy,
            classes: w.classes,
            confusion: w.confusion,
            confusion_normalized: w.confusion_normalized,
        }
    }
}

/// Scores predictions against the truth (both class indices into `labels`).
pub fn score(truth: &[usize], predicted: &[usize], labels: &[String]) -> Metrics {
    assert_eq!(truth.len(), predicted.len(), "one prediction per row");
    let k = labels.len();
    let mut confusion = vec![vec![0usize; k]; k];
    for (&t, &p) in truth.iter().zip(predicted) {
        confusion[t][p] += 1;
    }
    let ratio = |a: usize, b: usize| if b == 0 { None } else { Some(a as f64 / b as f64) };
    let classes: Vec<ClassScores> = (0..k)
        .map(|c| {
            let support: usize = confusion[c].iter().sum();
            let predicted: usize = confusion.iter().map(|row| row[c]).sum();
            ClassScores { label: labels[c].clone(), support, predicted, precision: ratio(confusion[c][c], predicted), recall: ratio(confusion[c][c], support) }
        })
        .collect();
    let confusion_normalized = confusion
        .iter()
        .map(|row| {
            let n: usize = row.iter().sum();
            row.iter().map(|&v| ratio(v, n).unwrap_or(0.0)).collect()
        })
        .collect();
    let right = (0..k).map(|c| confusion[c][c]).sum();
    let balanced_accuracy = balanced(&classes);
    Metrics {
        labels: labels.to_vec(),
        rows: truth.len(),
        accuracy: ratio(right, truth.len()).unwrap_or(0.0),
        balanced_accuracy,
        classes,
        confusion,
        confusion_normalized,
    }
}

/// Mean recall over the classes that have rows.
fn balanced(classes: &[ClassScores]) -> f64 {
    let recalls: Vec<f64> = classes.iter().filter_map(|c| c.recall).collect();
    if recalls.is_empty() {
        0.0
    } else {
        recalls.iter().sum::<f64>() / recalls.len() as f64
    }
}

/// `86.3%`, or `-` for an undefined ratio.
pub fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{:.1}%", 100.0 * v))
}

impl Metrics {
    /// The study's layout: rows = true class, columns = predicted class (row-normalised), then
    /// recall per row and precision per column.
    pub fn markdown(&self, title: &str) -> String {
        let mut s = format!(
            "#### {title}\n\nAccuracy **{}** on {} images (balanced accuracy {}).\n\n",
            percent(Some(self.accuracy)),
            self.rows,
            percent(Some(self.balanced_accuracy))
        );
        s.push_str(&format!("| true \\ predicted | {} | recall | images |\n", self.labels.join(" | ")));
        s.push_str(&format!("|---|{}---:|---:|\n", "---:|".repeat(self.labels.len())));
        for (c, row) in self.confusion_normalized.iter().enumerate() {
            let cells: Vec<String> = row.iter().map(|&v| percent(Some(v))).collect();
            s.push_str(&format!("| **{}** | {} | {} | {} |\n", self.labels[c], cells.join(" | "), percent(self.classes[c].recall), self.classes[c].support));
        }
        let precision: Vec<String> = self.classes.iter().map(|c| percent(c.precision)).collect();
        s.push_str(&format!("| precision | {} | | |\n", precision.join(" | ")));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_match_a_hand_count() {
        let labels = vec!["male".to_string(), "female".to_string()];
        // true male: 3 (2 right), true female: 2 (1 right)
        let m = score(&[0, 0, 0, 1, 1], &[0, 0, 1, 1, 0], &labels);
        assert_eq!(m.confusion, vec![vec![2, 1], vec![1, 1]]);
        assert_eq!(m.accuracy, 0.6);
        assert_eq!(m.classes[0].recall, Some(2.0 / 3.0));
        assert_eq!(m.classes[0].precision, Some(2.0 / 3.0));
        assert_eq!(m.classes[1].recall, Some(0.5));
        assert_eq!(m.classes[1].precision, Some(0.5));
        assert_eq!(m.confusion_normalized[1], vec![0.5, 0.5]);
        assert!((m.balanced_accuracy - (2.0 / 3.0 + 0.5) / 2.0).abs() < 1e-12);
        let md = m.markdown("gender");
        assert!(md.contains("| **male** | 66.7% | 33.3% | 66.7% | 3 |"), "{md}");
        assert!(md.contains("| precision | 66.7% | 50.0% | | |"), "{md}");
    }

    #[test]
    fn empty_classes_have_undefined_ratios() {
        let labels = vec!["a".to_string(), "b".to_string()];
        let m = score(&[0, 0], &[0, 0], &labels);
        assert_eq!(m.classes[1].recall, None);
        assert_eq!(m.classes[1].precision, None);
        assert_eq!(m.confusion_normalized[1], vec![0.0, 0.0]);
        assert_eq!(m.balanced_accuracy, 1.0, "a class without rows does not count");
        // always the majority class: accuracy 0.9, balanced accuracy 0.5
        let m = score(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 1], &[0; 10], &labels);
        assert_eq!((m.accuracy, m.balanced_accuracy), (0.9, 0.5));
        // a file written before the field existed reads with it recomputed, not as 0
        let mut old = serde_json::to_value(&m).unwrap();
        old.as_object_mut().unwrap().remove("balanced_accuracy");
        assert_eq!(serde_json::from_value::<Metrics>(old).unwrap(), m);
    }
}

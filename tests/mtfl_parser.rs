//! The MTFL annotation parser on the real format's quirks and on malformed lines.

mod common;

use std::path::Path;

use retrain::dataset::mtfl::{self, Split};

const GOOD: &str = "lfw_5590\\Aaron_Eckhart_0001.jpg 107.250000 147.750000 126.250000 106.250000 140.750000 108.750000 113.250000 143.750000 158.750000 162.750000 1 2 2 3\r\n \
lfw_5590\\Aaron_Guiel_0001.jpg 101.25 150.25 125.25 99.75 139.75 111.25 106.25 139.75 151.25 156.25 2 1 1 5\r\n\r\n  \r\n";

#[test]
fn accepts_crlf_leading_spaces_backslashes_and_blank_lines() {
    let parsed = mtfl::parse(GOOD, Path::new("/data/MTFL"));
    assert!(parsed.problems.is_empty());
    let samples = parsed.samples;
    assert_eq!(samples.len(), 2);
    let s = &samples[1];
    assert_eq!(s.key, "lfw_5590/Aaron_Guiel_0001.jpg");
    assert_eq!(s.path, Path::new("/data/MTFL/lfw_5590/Aaron_Guiel_0001.jpg"));
    assert_eq!(s.labels, vec![2, 1, 1, 5]);
    let l = s.landmarks.unwrap();
    assert_eq!((l[0], l[4], l[5], l[9]), (101.25, 139.75, 111.25, 156.25));
    assert_eq!(s.nose(), Some((125.25, 139.75)));
}

/// The one problem reported for `text`, after checking that every other line was kept.
fn error_of(text: &str) -> String {
    let parsed = mtfl::parse(text, Path::new("/m"));
    let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
    assert_eq!(parsed.problems.len(), 1, "{:?}", parsed.problems);
    assert_eq!(parsed.samples.len(), lines - 1, "the good lines must be kept");
    parsed.problems[0].to_string()
}

#[test]
fn too_few_columns_names_the_line() {
    let text = format!("{GOOD}AFLW/x.jpg 1 2 3 4 5 6 7 8 9 10 1 1 2\n");
    let e = error_of(&text);
    assert!(e.contains("line 5") && e.contains("expected 15 columns") && e.contains("found 14"), "{e}");
}

#[test]
fn non_number_names_line_and_column() {
    let e = error_of("AFLW/x.jpg 1 2 3 4 5 6 7 eight 9 10 1 1 2 3\n");
    assert!(e.contains("line 1") && e.contains("column 9") && e.contains("'eight'"), "{e}");
}

#[test]
fn unknown_label_code_names_the_attribute() {
    let e = error_of("AFLW/a.jpg 1 2 3 4 5 6 7 8 9 10 1 1 2 3\nAFLW/b.jpg 1 2 3 4 5 6 7 8 9 10 1 3 2 3\n");
    assert!(e.contains("line 2") && e.contains("smile") && e.contains("unknown code 3"), "{e}");
    let e = error_of("AFLW/a.jpg 1 2 3 4 5 6 7 8 9 10 1 1 2 6\n");
    assert!(e.contains("pose") && e.contains("1..=5"), "{e}");
}

#[test]
fn load_names_the_file_in_problems_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("testing.txt"), "AFLW/a.jpg 1 2\nAFLW/b.jpg 1 2 3 4 5 6 7 8 9 10 1 1 2 3\n").unwrap();
    let d = mtfl::load(dir.path(), Split::Testing).unwrap();
    assert_eq!(d.samples.len(), 1);
    let problem = d.problems[0].to_string();
    assert!(problem.contains("testing.txt:line 1") && problem.contains("found 3"), "{problem}");
    assert_eq!(d.problems[0].position, None);
    let e = format!("{:#}", mtfl::load(dir.path(), Split::Training).unwrap_err());
    assert!(e.contains("training.txt") && e.contains("cannot read"), "{e}");
}

#[test]
fn real_mtfl_counts_and_label_balance() {
    let Some(root) = common::shared_mtfl() else { return };
    let train = mtfl::load(&root, Split::Training).unwrap();
    let test = mtfl::load(&root, Split::Testing).unwrap();
    assert_eq!((train.samples.len(), test.samples.len()), (10_000, 2_995));
    let count = |d: &retrain::dataset::Dataset, col: usize, v: i32| d.samples.iter().filter(|s| s.labels[col] == v).count();
    assert_eq!((count(&train, 0, 1), count(&train, 0, 2)), (5_807, 4_193));
    assert_eq!((count(&train, 1, 1), count(&train, 1, 2)), (5_616, 4_384));
    assert_eq!((count(&test, 0, 1), count(&test, 0, 2)), (1_173, 1_822));
    assert_eq!((count(&test, 1, 1), count(&test, 1, 2)), (1_632, 1_363));
    assert!(train.samples.iter().all(|s| s.path.exists() && !s.name().contains('\\')));
    assert!(test.samples.iter().all(|s| s.path.exists()));
}

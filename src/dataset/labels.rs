//! Label files: one CSV row per image, `path,ATTR,...`.
//!
//! The header names the columns. `path` (required) is the image, relative to the CSV's folder,
//! kept byte for byte (a cell need not be UTF-8). Every other column is an attribute whose
//! cells are class names, as written; an empty cell is an unknown label ([`UNKNOWN_LABEL`]).
//! Optional columns: `x1..x5,y1..y5` (landmarks in pixels, all ten or none in the header, and
//! all ten or none in each row) and `split` (`train`, `val`, `test` or empty).
//!
//! Parsing follows RFC 4180 (quoted fields with commas, doubled quotes and line breaks), and
//! accepts a UTF-8 byte-order mark and CRLF line ends. Every problem of the file itself is an
//! error naming `FILE:LINE`, found before any work is written; an image that is missing or
//! unreadable is not one (extract skips it, as for any data set).
//!
//! Label codes are indices into each column's class names, sorted by their bytes.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use anyhow::{anyhow, bail, Context, Result};

use super::{Dataset, Sample, UNKNOWN_LABEL};

/// Landmark columns, in the order of [`Sample::landmarks`].
const LANDMARK_COLUMNS: [&str; 10] = ["x1", "x2", "x3", "x4", "x5", "y1", "y2", "y3", "y4", "y5"];

/// A value of the `split` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Train,
    Val,
    Test,
}

impl Part {
    pub fn name(self) -> &'static str {
        match self {
            Part::Train => "train",
            Part::Val => "val",
            Part::Test => "test",
        }
    }
}

impl std::str::FromStr for Part {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Part> {
        match s {
            "train" => Ok(Part::Train),
            "val" => Ok(Part::Val),
            "test" => Ok(Part::Test),
            _ => bail!("unknown split '{s}': expected train, val or test"),
        }
    }
}

/// How a label file is read.
#[derive(Debug, Clone, Copy, Default)]
pub struct LabelOptions {
    /// Accept paths that lead outside the CSV's folder (through `..`, a symlink or an absolute path).
    pub allow_outside: bool,
    /// Keep only the rows whose `split` cell is this (the file must have a `split` column).
    pub only: Option<Part>,
}

/// One record of a CSV file: the line it starts on, and its fields' bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub line: usize,
    pub fields: Vec<Vec<u8>>,
}

/// Splits CSV bytes into records (RFC 4180). A UTF-8 BOM is dropped; `\r\n`, `\n` and a lone
/// `\r` end a record outside quotes; blank lines are left out. Errors name the line.
pub fn records(bytes: &[u8]) -> std::result::Result<Vec<Record>, (usize, String)> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut out = Vec::new();
    let (mut line, mut start_line) = (1usize, 1usize);
    let mut fields: Vec<Vec<u8>> = Vec::new();
    let mut field: Vec<u8> = Vec::new();
    // Whether the current field was quoted, and whether we are inside its quotes.
    let (mut quoted, mut in_quotes) = (false, false);
    let mut i = 0;
    let end_record = |fields: &mut Vec<Vec<u8>>, field: &mut Vec<u8>, out: &mut Vec<Record>, start: usize, quoted: bool| {
        fields.push(std::mem::take(field));
        let all = std::mem::take(fields);
        if !(all.len() == 1 && all[0].is_empty() && !quoted) {
            out.push(Record { line: start, fields: all });
        }
    };
    while i < bytes.len() {
        let b = bytes[i];
        if in_quotes {
            match b {
                b'"' if bytes.get(i + 1) == Some(&b'"') => {
                    field.push(b'"');
                    i += 1;
                }
                b'"' => in_quotes = false,
                b'\n' => {
                    line += 1;
                    field.push(b);
                }
                _ => field.push(b),
            }
        } else {
            match b {
                b',' => {
                    fields.push(std::mem::take(&mut field));
                    quoted = false;
                }
                b'\r' | b'\n' => {
                    if b == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
                        i += 1;
                    }
                    end_record(&mut fields, &mut field, &mut out, start_line, quoted);
                    quoted = false;
                    line += 1;
                    start_line = line;
                }
                b'"' if field.is_empty() && !quoted => {
                    quoted = true;
                    in_quotes = true;
                }
                b'"' => return Err((line, "a quote inside an unquoted field (quote the whole field and double the quote)".into())),
                _ if quoted => return Err((line, "text after a closing quote (a quoted field ends at the comma or the line end)".into())),
                _ => field.push(b),
            }
        }
        i += 1;
    }
    if in_quotes {
        return Err((start_line, "a quoted field is not closed before the end of the file".into()));
    }
    if !field.is_empty() || !fields.is_empty() || quoted {
        end_record(&mut fields, &mut field, &mut out, start_line, quoted);
    }
    Ok(out)
}

/// Reads a label file into a [`Dataset`] (source `labels:FILE`, or `labels:FILE:PART` with
/// [`LabelOptions::only`]). The samples keep the file's row order.
pub fn load(csv: &Path, opts: &LabelOptions) -> Result<Dataset> {
    let bytes = std::fs::read(csv).with_context(|| format!("cannot read label file {}", csv.display()))?;
    parse(csv, &bytes, opts)
}

/// [`load`] on the bytes of `csv`.
pub fn parse(csv: &Path, bytes: &[u8], opts: &LabelOptions) -> Result<Dataset> {
    let at = |line: usize| format!("{}:{line}", csv.display());
    let records = records(bytes).map_err(|(line, e)| anyhow!("{}: {e}", at(line)))?;
    let Some((header, rows)) = records.split_first() else { bail!("{}: the file is empty (expected a header path,ATTR,...)", at(1)) };
    let columns = header_columns(header).map_err(|e| anyhow!("{}: {e}", at(header.line)))?;
    let folder = csv.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let canonical_folder = folder.canonicalize().ok();

    let mut samples = Vec::new();
    let mut parts = Vec::new();
    let mut cells: Vec<Vec<Option<String>>> = Vec::new(); // per row, per attribute
    let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
    for row in rows {
        let line = row.line;
        let err = |e: String| anyhow!("{}: {e}", at(line));
        if row.fields.len() != header.fields.len() {
            return Err(err(format!("{} fields, the header has {}", row.fields.len(), header.fields.len())));
        }
        let key = &row.fields[columns.path];
        if key.is_empty() {
            return Err(err("the path cell is empty".into()));
        }
        if let Some(first) = seen.insert(key.clone(), line) {
            return Err(err(format!("path '{}' is listed twice: lines {first} and {line}", OsStr::from_bytes(key).to_string_lossy())));
        }
        let rel = Path::new(OsStr::from_bytes(key));
        let path = folder.join(rel);
        if !opts.allow_outside {
            if let Some(how) = leads_outside(rel, &path, canonical_folder.as_deref()) {
                return Err(err(format!("path '{}' leads outside {} ({how}); give --allow-outside to accept it", rel.display(), folder.display())));
            }
        }
        let text =
            |k: usize, what: &str| -> Result<String> { String::from_utf8(row.fields[k].clone()).map_err(|_| err(format!("the {what} cell is not UTF-8"))) };
        let landmarks = match &columns.landmarks {
            None => None,
            Some(ks) => {
                let given = ks.iter().filter(|&&k| !row.fields[k].is_empty()).count();
                match given {
                    0 => None,
                    10 => {
                        let mut l = [0f32; 10];
                        for (j, &k) in ks.iter().enumerate() {
                            let cell = text(k, LANDMARK_COLUMNS[j])?;
                            l[j] = cell
                                .trim()
                                .parse::<f32>()
                                .ok()
                                .filter(|v| v.is_finite())
                                .ok_or_else(|| err(format!("landmark {} is '{cell}', not a number", LANDMARK_COLUMNS[j])))?;
                        }
                        Some(l)
                    }
                    n => return Err(err(format!("{n} of the ten landmark cells x1..x5,y1..y5 are given: give all ten or none"))),
                }
            }
        };
        let part = match columns.split {
            None => None,
            Some(k) => {
                let cell = text(k, "split")?;
                let cell = cell.trim();
                if cell.is_empty() {
                    None
                } else {
                    Some(cell.parse::<Part>().map_err(|e| err(e.to_string()))?)
                }
            }
        };
        let mut row_cells = Vec::new();
        for (name, &k) in columns.attributes.iter().zip(&columns.attribute_index) {
            let cell = text(k, &format!("'{name}'"))?;
            row_cells.push((!cell.is_empty()).then_some(cell));
        }
        cells.push(row_cells);
        parts.push(part);
        samples.push(Sample { path, key: OsStr::from_bytes(key).to_owned(), labels: Vec::new(), landmarks });
    }

    // Class names per attribute, sorted; a class of one row is refused.
    let mut column_class_names = BTreeMap::new();
    for (a, name) in columns.attributes.iter().enumerate() {
        let mut count: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for (row, c) in rows.iter().zip(&cells) {
            if let Some(class) = &c[a] {
                count.entry(class.as_str()).or_insert((0, row.line)).0 += 1;
            }
        }
        if let Some((class, (_, line))) = count.iter().find(|(_, (n, _))| *n == 1) {
            bail!("{}: class '{class}' of attribute '{name}' is on this row only; every class needs at least two rows (or leave the cell empty)", at(*line));
        }
        column_class_names.insert(name.clone(), count.keys().map(|c| c.to_string()).collect::<Vec<_>>());
    }
    for (sample, c) in samples.iter_mut().zip(&cells) {
        sample.labels = columns
            .attributes
            .iter()
            .zip(c)
            .map(|(name, cell)| match cell {
                None => UNKNOWN_LABEL,
                Some(class) => column_class_names[name].iter().position(|n| n == class).expect("a class seen") as i32,
            })
            .collect();
    }

    let mut source = format!("labels:{}", csv.display());
    if let Some(only) = opts.only {
        if columns.split.is_none() {
            bail!("{}: asked for the {} rows, and the file has no split column", at(header.line), only.name());
        }
        let keep: Vec<bool> = parts.iter().map(|p| *p == Some(only)).collect();
        let mut k = keep.iter();
        samples.retain(|_| *k.next().unwrap());
        parts.retain(|p| *p == Some(only));
        source.push_str(&format!(":{}", only.name()));
    }
    if columns.split.is_none() {
        parts.clear();
    }
    Ok(Dataset { source, label_columns: columns.attributes, class_names: Vec::new(), column_class_names, parts, samples, problems: Vec::new() })
}

/// Where each kind of column is in the header.
struct Columns {
    path: usize,
    attributes: Vec<String>,
    attribute_index: Vec<usize>,
    landmarks: Option<[usize; 10]>,
    split: Option<usize>,
}

fn header_columns(header: &Record) -> std::result::Result<Columns, String> {
    let mut names = Vec::new();
    for f in &header.fields {
        let name = std::str::from_utf8(f).map_err(|_| "a header name is not UTF-8".to_string())?.trim().to_string();
        if name.is_empty() {
            return Err(format!("header column {} has no name", names.len() + 1));
        }
        if names.contains(&name) {
            return Err(format!("header column '{name}' appears twice"));
        }
        names.push(name);
    }
    let find = |n: &str| names.iter().position(|c| c == n);
    let path = find("path").ok_or_else(|| format!("the header has no 'path' column (it has: {})", names.join(", ")))?;
    let found: Vec<Option<usize>> = LANDMARK_COLUMNS.iter().map(|c| find(c)).collect();
    let landmarks = match found.iter().filter(|f| f.is_some()).count() {
        0 => None,
        10 => Some(std::array::from_fn(|j| found[j].unwrap())),
        _ => {
            let missing: Vec<&str> = LANDMARK_COLUMNS.iter().zip(&found).filter(|(_, f)| f.is_none()).map(|(c, _)| *c).collect();
            return Err(format!("landmark columns are x1..x5,y1..y5, all ten or none; missing: {}", missing.join(", ")));
        }
    };
    let split = find("split");
    let special = |k: usize| k == path || Some(k) == split || landmarks.is_some_and(|l| l.contains(&k));
    let attribute_index: Vec<usize> = (0..names.len()).filter(|&k| !special(k)).collect();
    let attributes = attribute_index.iter().map(|&k| names[k].clone()).collect();
    Ok(Columns { path, attributes, attribute_index, landmarks, split })
}

/// Why `rel` (as written) or `path` (it joined to the CSV's folder) leads outside that folder,
/// or `None` when it stays inside.
fn leads_outside(rel: &Path, path: &Path, canonical_folder: Option<&Path>) -> Option<&'static str> {
    let mut depth = 0i64;
    for c in rel.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => return Some("an absolute path"),
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return Some("through '..'");
                }
            }
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
        }
    }
    let (Some(folder), Ok(real)) = (canonical_folder, path.canonicalize()) else { return None };
    (!real.starts_with(folder)).then_some("through a symlink")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(bytes: &[u8]) -> Vec<Vec<String>> {
        records(bytes).unwrap().into_iter().map(|r| r.fields.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect()).collect()
    }

    fn load_str(text: &str, opts: LabelOptions) -> Result<Dataset> {
        parse(Path::new("/nowhere/l.csv"), text.as_bytes(), &opts)
    }

    fn error(text: &str) -> String {
        format!("{:#}", load_str(text, LabelOptions::default()).unwrap_err())
    }

    #[test]
    fn bom_and_crlf() {
        assert_eq!(fields(b"\xEF\xBB\xBFpath,a\r\nx.jpg,1\r\n"), vec![vec!["path", "a"], vec!["x.jpg", "1"]]);
    }

    #[test]
    fn quoted_comma_doubled_quote_and_newline() {
        assert_eq!(fields(b"\"a,b\",\"say \"\"hi\"\"\"\n\"two\nlines\",z"), vec![vec!["a,b", "say \"hi\""], vec!["two\nlines", "z"]]);
        let r = records(b"h\n\"x\ny\"\nlast\n").unwrap();
        assert_eq!(r.iter().map(|r| r.line).collect::<Vec<_>>(), vec![1, 2, 4]);
    }

    #[test]
    fn blank_lines_and_empty_cells() {
        assert_eq!(fields(b"a,b\n\n,\nx,\n"), vec![vec!["a", "b"], vec!["", ""], vec!["x", ""]]);
        assert_eq!(fields(b"a\n\"\"\n"), vec![vec!["a"], vec![""]]);
    }

    #[test]
    fn broken_quotes_name_the_line() {
        assert_eq!(records(b"a\nb\"c\n").unwrap_err().0, 2);
        assert_eq!(records(b"a\n\"x\"y\n").unwrap_err().0, 2);
        assert_eq!(records(b"a\nb\n\"open\n\n").unwrap_err().0, 3);
    }

    #[test]
    fn non_utf8_path_bytes_are_kept() {
        let d = parse(Path::new("/nowhere/l.csv"), b"path,a\ncaf\xe9.jpg,x\nb.jpg,x\n", &LabelOptions::default()).unwrap();
        assert_eq!(d.samples[0].key.as_bytes(), b"caf\xe9.jpg");
        assert_eq!(d.samples[0].path.as_os_str().as_bytes(), b"/nowhere/caf\xe9.jpg");
    }

    #[test]
    fn codes_index_the_sorted_class_names() {
        let d = load_str("path,hair,hat\na.jpg,red,\nb.jpg,black,yes\nc.jpg,red,no\nd.jpg,black,yes\ne.jpg,,no\n", LabelOptions::default()).unwrap();
        assert_eq!(d.label_columns, vec!["hair", "hat"]);
        assert_eq!(d.column_class_names["hair"], vec!["black", "red"]);
        assert_eq!(d.column_class_names["hat"], vec!["no", "yes"]);
        let labels: Vec<Vec<i32>> = d.samples.iter().map(|s| s.labels.clone()).collect();
        assert_eq!(labels, vec![vec![1, -1], vec![0, 1], vec![1, 0], vec![0, 1], vec![-1, 0]]);
        assert!(d.parts.is_empty() && d.samples.iter().all(|s| s.landmarks.is_none()));
    }

    #[test]
    fn landmarks_and_split() {
        let text = "split,path,x1,x2,x3,x4,x5,y1,y2,y3,y4,y5,a\ntrain,a.jpg,1,2,3,4,5,6,7,8,9,10,p\ntest,b.jpg,,,,,,,,,,,p\n,c.jpg,,,,,,,,,,,\n";
        let d = load_str(text, LabelOptions::default()).unwrap();
        assert_eq!(d.samples[0].landmarks, Some([1., 2., 3., 4., 5., 6., 7., 8., 9., 10.]));
        assert_eq!(d.samples[1].landmarks, None);
        assert_eq!(d.parts, vec![Some(Part::Train), Some(Part::Test), None]);
        let t = load_str(text, LabelOptions { only: Some(Part::Test), ..Default::default() }).unwrap();
        assert_eq!((t.samples.len(), t.source.as_str(), &t.parts[..]), (1, "labels:/nowhere/l.csv:test", &[Some(Part::Test)][..]));
        assert!(error(&text.replace("test,b", "later,b")).contains("l.csv:3: unknown split 'later'"));
        assert!(error(&text.replace(",8,", ",eight,")).contains("l.csv:2: landmark y3 is 'eight', not a number"));
        assert!(error(&text.replace("b.jpg,,", "b.jpg,4,")).contains("l.csv:3: 1 of the ten landmark cells"));
        assert!(error(&text.replace(",y5,", ",y6,")).contains("l.csv:1: landmark columns are x1..x5,y1..y5, all ten or none; missing: y5"));
        let none = format!("{:#}", load_str("path,a\nx,1\ny,1\n", LabelOptions { only: Some(Part::Val), ..Default::default() }).unwrap_err());
        assert!(none.contains("l.csv:1: asked for the val rows, and the file has no split column"), "{none}");
    }

    #[test]
    fn file_errors_name_file_and_line() {
        assert!(error("file,a\nx,1\n").contains("/nowhere/l.csv:1: the header has no 'path' column (it has: file, a)"));
        assert!(error("path,a\nx.jpg,1\ny.jpg,1\nx.jpg,1\n").contains("l.csv:4: path 'x.jpg' is listed twice: lines 2 and 4"));
        assert!(error("path,a\nx.jpg,1\ny.jpg,2\nz.jpg,2\n").contains("l.csv:2: class '1' of attribute 'a' is on this row only"));
        assert!(error("path,a\nx.jpg,1,2\n").contains("l.csv:2: 3 fields, the header has 2"));
        assert!(error("path,a\n,1\n").contains("l.csv:2: the path cell is empty"));
        assert!(error("path,a,a\n").contains("l.csv:1: header column 'a' appears twice"));
        assert!(error("").contains("l.csv:1: the file is empty"));
        assert!(error("path,a\nx.jpg,\"1\n").contains("l.csv:2: a quoted field is not closed"));
    }

    #[test]
    fn paths_outside_the_folder() {
        let text = "path,a\nsub/../x.jpg,1\n../y.jpg,1\n";
        assert!(error(text).contains("l.csv:3: path '../y.jpg' leads outside /nowhere (through '..'); give --allow-outside"));
        assert!(error("path,a\n/etc/x.jpg,1\nb,1\n").contains("l.csv:2: path '/etc/x.jpg' leads outside /nowhere (an absolute path)"));
        let d = load_str(text, LabelOptions { allow_outside: true, ..Default::default() }).unwrap();
        assert_eq!(d.samples[1].path, Path::new("/nowhere/../y.jpg"));
    }

    #[test]
    fn symlink_out_of_the_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (inside, outside) = (dir.path().join("in"), dir.path().join("out"));
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("x.jpg"), b"").unwrap();
        std::fs::write(inside.join("y.jpg"), b"").unwrap();
        std::os::unix::fs::symlink(outside.join("x.jpg"), inside.join("x.jpg")).unwrap();
        let csv = inside.join("l.csv");
        std::fs::write(&csv, "path,a\nx.jpg,1\ny.jpg,1\n").unwrap();
        let e = format!("{:#}", load(&csv, &LabelOptions::default()).unwrap_err());
        assert!(e.contains("l.csv:2: path 'x.jpg' leads outside") && e.contains("(through a symlink)"), "{e}");
        assert_eq!(load(&csv, &LabelOptions { allow_outside: true, ..Default::default() }).unwrap().samples.len(), 2);
    }
}

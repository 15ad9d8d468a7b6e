//! Whole-file comparison of two HDF5 files: every group, dataset and attribute, values bit for
//! bit, but for the attributes that record when (or how long) something ran.

use std::path::Path;

use hdf5::types::{FloatSize, IntSize, TypeDescriptor, VarLenUnicode};

/// What a dataset or attribute holds, comparable.
#[derive(Debug, PartialEq)]
enum Values {
    Bits(Vec<u64>),
    Text(Vec<String>),
}

fn values(c: &hdf5::Container, at: &str) -> (Vec<usize>, Values) {
    let descriptor = c.dtype().and_then(|t| t.to_descriptor()).unwrap_or_else(|e| panic!("{at}: {e}"));
    let bits = |v: Vec<u64>| Values::Bits(v);
    let read = match descriptor {
        TypeDescriptor::Float(FloatSize::U4) => c.read_raw::<f32>().map(|v| bits(v.iter().map(|x| x.to_bits() as u64).collect())),
        TypeDescriptor::Float(FloatSize::U8) => c.read_raw::<f64>().map(|v| bits(v.iter().map(|x| x.to_bits()).collect())),
        TypeDescriptor::Integer(IntSize::U4) => c.read_raw::<i32>().map(|v| bits(v.iter().map(|&x| x as u64).collect())),
        TypeDescriptor::Integer(IntSize::U8) => c.read_raw::<i64>().map(|v| bits(v.iter().map(|&x| x as u64).collect())),
        TypeDescriptor::VarLenUnicode => c.read_raw::<VarLenUnicode>().map(|v| Values::Text(v.iter().map(|s| s.as_str().to_string()).collect())),
        other => panic!("{at}: type {other:?} is not compared here"),
    };
    (c.shape(), read.unwrap_or_else(|e| panic!("{at}: {e}")))
}

fn same_attributes(a: &hdf5::Location, b: &hdf5::Location, at: &str, ignore: &[&str]) {
    let names = |l: &hdf5::Location| {
        let mut n: Vec<String> = l.attr_names().unwrap().into_iter().filter(|n| !ignore.contains(&n.as_str())).collect();
        n.sort();
        n
    };
    let (na, nb) = (names(a), names(b));
    assert_eq!(na, nb, "{at}: the attributes differ");
    for n in na {
        let here = format!("{at} attribute {n}");
        assert_eq!(values(&a.attr(&n).unwrap(), &here), values(&b.attr(&n).unwrap(), &here), "{here} differs");
    }
}

fn same_group(a: &hdf5::Group, b: &hdf5::Group, at: &str, ignore: &[&str]) {
    same_attributes(a, b, at, ignore);
    let (mut na, mut nb) = (a.member_names().unwrap(), b.member_names().unwrap());
    na.sort();
    nb.sort();
    assert_eq!(na, nb, "{at}: the members differ");
    for n in na {
        let here = format!("{at}{n}");
        match (a.group(&n), b.group(&n)) {
            (Ok(ga), Ok(gb)) => same_group(&ga, &gb, &format!("{here}/"), ignore),
            _ => {
                let (da, db) = (a.dataset(&n).unwrap(), b.dataset(&n).unwrap());
                same_attributes(&da, &db, &here, ignore);
                assert!(values(&da, &here) == values(&db, &here), "{here} differs");
            }
        }
    }
}

/// Asserts that two HDF5 files hold the same groups, datasets and attributes with the same
/// values, apart from the attributes named in `ignore`.
pub fn assert_same_h5(a: &Path, b: &Path, ignore: &[&str]) {
    let open = |p: &Path| hdf5::File::open(p).unwrap_or_else(|e| panic!("cannot open {}: {e}", p.display()));
    same_group(&open(a), &open(b), "/", ignore);
}

/// Two caches are the same file but for when they were made.
pub fn same_cache_file(a: &Path, b: &Path) {
    assert_same_h5(a, b, &["created"]);
}

/// Two checkpoints are the same file but for when they were written and how long it took.
pub fn same_checkpoint_file(a: &Path, b: &Path) {
    assert_same_h5(a, b, &["created", "train_seconds", "partial_seconds"]);
}

/// Two history.csv files agree in every column but the wall time (the last).
pub fn same_history(a: &Path, b: &Path) {
    let read = |p: &Path| -> Vec<String> {
        let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        text.lines().map(|l| l.rsplit_once(',').map_or(l, |(rest, _)| rest).to_string()).collect()
    };
    assert_eq!(read(a), read(b), "{} and {} differ", a.display(), b.display());
}

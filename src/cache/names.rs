//! Image names as the cache stores them, in `/paths` and in the `/skipped` entries.
//!
//! The strings of a cache are UTF-8, as h5py and other readers expect, but a file name is any
//! bytes (a Latin-1 `caf\xE9.jpg` copied from an old disk). A name that is UTF-8 — every name
//! of MTFL, nearly every name anywhere — is stored as it is, so every cache stays as it was. A
//! name that is not is stored escaped — each byte outside UTF-8 as `\xHH`, a backslash as
//! `\\`, a tab as `\x09` (a skip entry is `name<TAB>reason`) — and the entry's number goes to
//! the dataset's companion (`/paths_escaped`, `/skipped_escaped`: ascending int64), made with
//! its first such name. The companion says which entries to unescape, so that a UTF-8 name that
//! merely looks escaped comes back as it is, and every other name byte for byte.

use std::borrow::Cow;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use anyhow::{anyhow, Result};
use ndarray::Array1;

/// Entries per chunk of a companion dataset.
const CHUNK: usize = 256;

/// How `name` is stored, and whether that is escaped.
pub fn encode(name: &OsStr) -> (Cow<'_, str>, bool) {
    if let Some(text) = name.to_str() {
        return (Cow::Borrowed(text), false);
    }
    let mut out = String::new();
    for chunk in name.as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\x09"),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    (Cow::Owned(out), true)
}

/// The name `stored` holds: as it is, or unescaped where its companion lists it (`escaped`).
pub fn decode(stored: &str, escaped: bool) -> Result<OsString> {
    if !escaped {
        return Ok(OsString::from(stored));
    }
    let damaged = || anyhow!("'{stored}' is listed as escaped, but is not as retrain escapes names");
    let mut bytes = Vec::with_capacity(stored.len());
    let mut rest = stored.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b != b'\\' {
            bytes.push(b);
            rest = tail;
            continue;
        }
        let (value, after) = match tail {
            [b'\\', after @ ..] => (b'\\', after),
            [b'x', high, low, after @ ..] => (hex_byte(*high, *low).ok_or_else(damaged)?, after),
            _ => return Err(damaged()),
        };
        bytes.push(value);
        rest = after;
    }
    Ok(OsString::from_vec(bytes))
}

/// The byte two hex digits spell.
fn hex_byte(high: u8, low: u8) -> Option<u8> {
    let digit = |c: u8| (c as char).to_digit(16);
    Some((digit(high)? * 16 + digit(low)?) as u8)
}

/// The dataset listing which entries of `dataset` are escaped.
fn companion(dataset: &str) -> String {
    format!("{dataset}_escaped")
}

/// For each of the first `n` entries of `dataset`, whether it is stored escaped.
pub fn escaped(file: &hdf5::File, dataset: &str, n: usize) -> Result<Vec<bool>> {
    let mut flags = vec![false; n];
    for entry in listed(file, dataset)? {
        if let Some(flag) = usize::try_from(entry).ok().and_then(|e| flags.get_mut(e)) {
            *flag = true;
        }
    }
    Ok(flags)
}

/// Every entry number the companion of `dataset` lists (none without one).
fn listed(file: &hdf5::File, dataset: &str) -> Result<Vec<i64>> {
    let name = companion(dataset);
    if !file.link_exists(&name) {
        return Ok(Vec::new());
    }
    Ok(file.dataset(&name)?.read_1d::<i64>()?.to_vec())
}

/// Lists `entries` of `dataset` (past every one listed before) as escaped, making the companion
/// with the first.
pub fn list_escaped(file: &hdf5::File, dataset: &str, entries: &[i64]) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let name = companion(dataset);
    let ds = match file.dataset(&name) {
        Ok(ds) => ds,
        Err(_) => file.new_dataset::<i64>().chunk(CHUNK).fletcher32().shape(0..).create(name.as_str())?,
    };
    let start = ds.shape()[0];
    ds.resize(start + entries.len())?;
    ds.write_slice(&Array1::from(entries.to_vec()), start..start + entries.len())?;
    Ok(())
}

/// Drops from the companion of `dataset` the entries from `len` on, which a killed run wrote
/// after its last commit; reading it whole checks its checksums.
pub fn truncate(file: &hdf5::File, dataset: &str, len: usize) -> Result<()> {
    let entries = listed(file, dataset)?;
    let kept = entries.iter().take_while(|&&e| (e as usize) < len).count();
    if kept < entries.len() {
        file.dataset(&companion(dataset))?.resize(kept)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_names_are_stored_as_they_are() {
        for name in ["ok/img000.jpg", "café/a b.jpg", "with\\backslash\\xE9.jpg", "tab\there", ""] {
            assert_eq!(encode(OsStr::new(name)), (Cow::Borrowed(name), false));
            assert_eq!(decode(name, false).unwrap(), name);
        }
    }

    #[test]
    fn other_names_come_back_byte_for_byte() {
        for bytes in [&b"ok/caf\xe9.jpg"[..], b"\xff", b"a\\x41\\\xe9\t.png", b"\xc3(\xe2\x82", b"end\\\xe9\\"] {
            let name = OsStr::from_bytes(bytes);
            let (stored, escaped) = encode(name);
            assert!(escaped && !stored.contains('\t'), "{stored}");
            assert_eq!(decode(&stored, true).unwrap(), name, "{stored}");
        }
        assert_eq!(encode(OsStr::from_bytes(b"ok/caf\xe9.jpg")).0, "ok/caf\\xE9.jpg");
    }

    #[test]
    fn a_damaged_escape_is_an_error() {
        for stored in ["caf\\xZZ", "caf\\", "caf\\x4", "caf\\q"] {
            assert!(decode(stored, true).is_err(), "{stored}");
        }
    }
}

//! Whether a JPEG file is whole: its segments walked up to the end-of-image marker.
//!
//! A JPEG cut short after its headers still decodes — the decoder fills the missing part of
//! the picture with grey and says nothing — so a truncated file would be cached as if it were
//! fine. Walking the segments (headers by their lengths, entropy-coded data up to the next
//! marker) finds whether the file reaches its EOI marker. Bytes after EOI are allowed (some
//! cameras append data there).

/// `None` for a whole JPEG (or data that does not start like one: the decoder judges that);
/// otherwise why the file is incomplete.
pub fn missing_end(data: &[u8]) -> Option<String> {
    if !data.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let cut = |at: usize, inside: &str| Some(format!("JPEG file ends at byte {at} {inside}, before its end-of-image marker (cut short?)"));
    let mut i = 2;
    loop {
        // Any bytes up to the next 0xFF, then fill bytes, then the marker code.
        while i < data.len() && data[i] != 0xFF {
            i += 1;
        }
        while i < data.len() && data[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = data.get(i) else { return cut(data.len(), "between segments") };
        i += 1;
        match marker {
            0xD9 => return None,
            // markers without a length: SOI, TEM, RST0-7
            0xD8 | 0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len) = data.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]) as usize) else {
            return cut(data.len(), "inside a segment header");
        };
        i += len;
        if i > data.len() {
            return cut(data.len(), &format!("inside a segment (marker 0x{marker:02X}, {len} bytes)"));
        }
        if marker == 0xDA {
            // Start of scan: entropy-coded data runs to the next marker other than a stuffed
            // 0xFF00 or a restart marker.
            match scan_end(data, i) {
                Some(end) => i = end,
                None => return cut(data.len(), "inside the image data"),
            }
        }
    }
}

/// The position of the 0xFF that starts the first marker after entropy-coded data at `from`.
fn scan_end(data: &[u8], from: usize) -> Option<usize> {
    let mut j = from;
    while j + 1 < data.len() {
        if data[j] != 0xFF {
            j += 1;
            continue;
        }
        match data[j + 1] {
            0x00 | 0xD0..=0xD7 => j += 2,
            0xFF => j += 1,
            _ => return Some(j),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::missing_end;

    fn jpeg() -> Vec<u8> {
        let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x ^ y) * 3) as u8]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    #[test]
    fn a_whole_jpeg_passes_and_every_cut_is_found() {
        let whole = jpeg();
        assert_eq!(missing_end(&whole), None);
        let mut trailing = whole.clone();
        trailing.extend_from_slice(b"camera maker notes");
        assert_eq!(missing_end(&trailing), None, "bytes after EOI are allowed");
        for cut in (3..whole.len() - 1).step_by(7).chain([whole.len() - 2, whole.len() - 1]) {
            let reason = missing_end(&whole[..cut]).unwrap_or_else(|| panic!("cut at {cut} of {} not found", whole.len()));
            assert!(reason.contains("end-of-image marker"), "{reason}");
        }
    }

    #[test]
    fn other_data_is_left_to_the_decoder() {
        assert_eq!(missing_end(b"\x89PNG\r\n"), None);
        assert_eq!(missing_end(b""), None);
    }
}

//! Confusion matrices as PNG images, drawn pixel by pixel (no font files, no plotting crate).

mod font;

use std::path::Path;

use anyhow::{Context, Result};
use image::{Rgb, RgbImage};

use crate::metrics::{percent, Metrics};

/// Text is drawn with each font pixel as a SCALE x SCALE square.
const SCALE: u32 = 2;
const MARGIN: u32 = 20;
const CELL_W: u32 = 150;
const CELL_H: u32 = 70;
const LINE: u32 = (font::HEIGHT + 2) * SCALE;
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const GRID: Rgb<u8> = Rgb([160, 160, 160]);

fn text_width(s: &str) -> u32 {
    s.chars().count() as u32 * font::ADVANCE * SCALE
}

fn draw_text(img: &mut RgbImage, x: u32, y: u32, s: &str, color: Rgb<u8>) {
    for (k, c) in s.chars().enumerate() {
        let left = x + k as u32 * font::ADVANCE * SCALE;
        for (row, bits) in font::glyph(c).iter().enumerate() {
            for col in 0..font::WIDTH {
                if bits & (1 << (font::WIDTH - 1 - col)) != 0 {
                    fill(img, left + col * SCALE, y + row as u32 * SCALE, SCALE, SCALE, color);
                }
            }
        }
    }
}

fn fill(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, color: Rgb<u8>) {
    for yy in y..(y + h).min(img.height()) {
        for xx in x..(x + w).min(img.width()) {
            img.put_pixel(xx, yy, color);
        }
    }
}

/// White (0) to dark blue (1).
fn shade(v: f64) -> Rgb<u8> {
    let v = v.clamp(0.0, 1.0);
    let mix = |from: f64, to: f64| (from + (to - from) * v).round() as u8;
    Rgb([mix(255.0, 8.0), mix(255.0, 48.0), mix(255.0, 107.0)])
}

/// Draws the row-normalised confusion matrix of `m` with its title and axis names.
pub fn confusion_image(m: &Metrics, title: &str) -> RgbImage {
    let k = m.labels.len() as u32;
    let label_w = m.labels.iter().map(|l| text_width(l)).max().unwrap_or(0).max(text_width("true"));
    let grid_x = MARGIN + label_w + MARGIN;
    let grid_y = MARGIN + 3 * LINE + LINE;
    let subtitle = format!("accuracy {} on {} images; rows: true class, columns: predicted", percent(Some(m.accuracy)), m.rows);
    let width = (grid_x + k * CELL_W + MARGIN).max(2 * MARGIN + text_width(&subtitle)).max(2 * MARGIN + text_width(title));
    let height = grid_y + k * CELL_H + MARGIN;
    let mut img = RgbImage::from_pixel(width, height, WHITE);
    draw_text(&mut img, MARGIN, MARGIN, title, BLACK);
    draw_text(&mut img, MARGIN, MARGIN + LINE, &subtitle, BLACK);
    draw_text(&mut img, MARGIN, grid_y - LINE, "true", GRID);
    for (j, label) in m.labels.iter().enumerate() {
        let x = grid_x + j as u32 * CELL_W + (CELL_W.saturating_sub(text_width(label))) / 2;
        draw_text(&mut img, x, grid_y - LINE, label, BLACK);
    }
    for (i, row) in m.confusion_normalized.iter().enumerate() {
        let y = grid_y + i as u32 * CELL_H;
        draw_text(&mut img, MARGIN, y + CELL_H / 2 - LINE / 2, &m.labels[i], BLACK);
        for (j, &v) in row.iter().enumerate() {
            let x = grid_x + j as u32 * CELL_W;
            fill(&mut img, x, y, CELL_W, CELL_H, GRID);
            fill(&mut img, x + 1, y + 1, CELL_W - 2, CELL_H - 2, shade(v));
            let ink = if v > 0.5 { WHITE } else { BLACK };
            let value = percent(Some(v));
            let count = format!("({})", m.confusion[i][j]);
            draw_text(&mut img, x + (CELL_W - text_width(&value)) / 2, y + CELL_H / 2 - LINE, &value, ink);
            draw_text(&mut img, x + (CELL_W.saturating_sub(text_width(&count))) / 2, y + CELL_H / 2 + 2, &count, ink);
        }
    }
    img
}

/// Draws the row-normalised confusion matrix of `m`, titled `title`, as a PNG at `path`.
pub fn save_confusion_png(m: &Metrics, title: &str, path: &Path) -> Result<()> {
    confusion_image(m, title).save(path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::score;

    #[test]
    fn cells_are_shaded_by_their_share() {
        let labels = vec!["smiling".to_string(), "not_smiling".to_string()];
        let m = score(&[0, 0, 0, 0, 1, 1], &[0, 0, 0, 1, 1, 1], &labels);
        let img = confusion_image(&m, "smile");
        let k = 2;
        let label_w = text_width("not_smiling");
        let (gx, gy) = (MARGIN + label_w + MARGIN, MARGIN + 4 * LINE);
        assert_eq!(img.width(), (gx + k * CELL_W + MARGIN).max(2 * MARGIN + text_width("accuracy 83.3% on 6 images; rows: true class, columns: predicted")));
        // A corner pixel of each cell (inside the border, away from the text) has the cell's shade.
        assert_eq!(*img.get_pixel(gx + 3, gy + 3), shade(0.75));
        assert_eq!(*img.get_pixel(gx + CELL_W + 3, gy + CELL_H + 3), shade(1.0));
        assert_eq!(*img.get_pixel(gx + CELL_W + 3, gy + 3), shade(0.25));
    }
}

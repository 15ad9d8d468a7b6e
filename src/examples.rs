//! Data the documentation's examples run on: generated class folders, so that every example
//! is a real run (ONNX Runtime, HDF5, image files) on the small test backbone.

use std::path::{Path, PathBuf};

use anyhow::Result;

/// The small committed backbone the examples run (NHWC 32x32 in, 16 features out).
pub const BACKBONE: &str = "onnx/test/tiny_cnn.onnx";

/// Writes `root/dark/*.png` and `root/light/*.png`, `per_class` images each, that the
/// backbone tells apart; returns `root`.
pub fn class_folders(root: &Path, per_class: u8) -> Result<PathBuf> {
    for (class, shade) in [("dark", 30u8), ("light", 200)] {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir)?;
        for i in 0..per_class {
            let image = image::RgbImage::from_fn(40, 40, |x, y| {
                let v = shade.saturating_add(((x * 3 + y * 5 + u32::from(i) * 7) % 40) as u8);
                image::Rgb([v, v / 2 + shade / 2, 255 - v])
            });
            image.save(dir.join(format!("{class}{i}.png")))?;
        }
    }
    Ok(root.to_path_buf())
}

/// Class folders under `dir` extracted with [`BACKBONE`]: the cache's path.
pub fn cache(dir: &Path) -> Result<PathBuf> {
    let photos = class_folders(&dir.join("photos"), 8)?;
    let mut backbone = crate::model::Model::load(Path::new(BACKBONE), &crate::runtime::SessionConfig::cpu(), None)?;
    let opts = crate::extract::ExtractOptions { out: Some(dir.join("photos.h5")), show_progress: false, ..Default::default() };
    Ok(crate::extract::extract(&crate::dataset::folders::load(&photos)?, &mut backbone, &opts)?.out)
}

/// A linfa head for `class` fitted on [`cache`]'s rows: the head's path.
pub fn head(dir: &Path) -> Result<PathBuf> {
    let cache_path = cache(dir)?;
    let cache = crate::cache::Cache::read(&cache_path)?;
    let fitted = crate::head::train(&cache, &cache_path, &crate::head::HeadOptions::new("class", crate::head::Solver::Linfa), &mut |_| {})?;
    let path = dir.join("class.onnx");
    fitted.head.save(&path, &fitted.curve)?;
    Ok(path)
}

/// [`BACKBONE`] and [`head`] exported as one model: its path.
pub fn exported(dir: &Path) -> Result<PathBuf> {
    let head = head(dir)?;
    let path = dir.join("model.onnx");
    crate::export::export(Path::new(BACKBONE), &[&head], &path, crate::export::Input::Tensor)?;
    Ok(path)
}

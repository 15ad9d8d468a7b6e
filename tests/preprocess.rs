//! Crop geometry, colour conversion, scaling and layout, and the hash split.

mod common;

use std::process::Command;

use image::{Rgb, RgbImage};
use retrain::dataset::split::{assign, Subset};
use retrain::dataset::Sample;
use retrain::preprocess::{crop_window, decode_whole, face_window, write_tensor, Crop, InputSpec, Layout, Preprocess};

const NOSE: Crop = Crop::Nose { size: 150 };

#[test]
fn nose_window_is_centred_on_the_nose() {
    assert_eq!(crop_window(NOSE, 250, 250, Some((125.0, 130.0))).unwrap(), (50, 55, 150, 150));
    assert_eq!(crop_window(Crop::Original, 250, 250, None).unwrap(), (0, 0, 250, 250));
}

#[test]
fn nose_window_is_shifted_inside_the_image() {
    // Nose near the top-left corner: the window starts at 0 rather than leaving the image.
    assert_eq!(crop_window(NOSE, 400, 400, Some((20.0, 30.0))).unwrap(), (0, 0, 150, 150));
    // Near the bottom-right corner: it ends at the border.
    assert_eq!(crop_window(NOSE, 400, 400, Some((390.0, 399.0))).unwrap(), (250, 250, 150, 150));
}

#[test]
fn nose_window_shrinks_to_a_smaller_image() {
    // 160x216 net_7876 images are narrower than 150 only in neither axis; a 100x120 one is in both.
    assert_eq!(crop_window(NOSE, 160, 216, Some((80.0, 108.0))).unwrap(), (5, 33, 150, 150));
    assert_eq!(crop_window(NOSE, 100, 120, Some((50.0, 60.0))).unwrap(), (0, 0, 100, 120));
    // AFLW test images are exactly 150x150: the crop is the whole image.
    assert_eq!(crop_window(NOSE, 150, 150, Some((70.0, 90.0))).unwrap(), (0, 0, 150, 150));
}

#[test]
fn nose_crop_needs_a_nose_inside_the_image() {
    let e = crop_window(NOSE, 100, 100, Some((150.0, 50.0))).unwrap_err().to_string();
    assert!(e.contains("outside") && e.contains("100x100"), "{e}");
    let e = crop_window(NOSE, 100, 100, None).unwrap_err().to_string();
    assert!(e.contains("needs landmarks"), "{e}");
}

#[test]
fn face_crop_is_sized_from_the_eye_to_mouth_distance() {
    // eyes at y 100, mouth corners at y 140: distance 40; centre of the five points (125, 120)
    let l = Some([105.0, 145.0, 125.0, 110.0, 140.0, 100.0, 100.0, 120.0, 140.0, 140.0]);
    assert_eq!(face_window(320, 250, 250, l).unwrap(), (61, 56, 128, 128));
    // larger than the image: shrunk to it, never padded
    assert_eq!(face_window(800, 250, 250, l).unwrap(), (0, 0, 250, 250));
    assert!(face_window(320, 250, 250, None).unwrap_err().to_string().contains("needs landmarks"));
    assert_eq!("face".parse::<Crop>().unwrap(), Crop::Face { scale_percent: 320 });
    assert_eq!("face:2.5".parse::<Crop>().unwrap().to_string(), "face:2.5");
    assert!("face:-1".parse::<Crop>().is_err());
}

fn spec(layout: Layout, w: u32, h: u32) -> InputSpec {
    InputSpec { layout, height: h, width: w, mean: [0.5, 0.25, 0.0], std: [0.5, 0.25, 1.0], resize: retrain::preprocess::Filter::Bilinear }
}

#[test]
fn scaling_and_layout_follow_the_spec() {
    let img = RgbImage::from_fn(2, 1, |x, _| if x == 0 { Rgb([255, 0, 51]) } else { Rgb([0, 255, 102]) });
    let mut nhwc = vec![0f32; 6];
    write_tensor(&img, &spec(Layout::Nhwc, 2, 1), &mut nhwc);
    let expect = [1.0, -1.0, 0.2, -1.0, 3.0, 0.4];
    for (a, b) in nhwc.iter().zip(expect) {
        assert!((a - b).abs() < 1e-6, "{nhwc:?}");
    }
    let mut nchw = vec![0f32; 6];
    write_tensor(&img, &spec(Layout::Nchw, 2, 1), &mut nchw);
    let expect = [1.0, -1.0, -1.0, 3.0, 0.2, 0.4];
    for (a, b) in nchw.iter().zip(expect) {
        assert!((a - b).abs() < 1e-6, "{nchw:?}");
    }
}

#[test]
fn nose_crop_takes_the_right_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.png");
    // Pixel value encodes its own coordinates, so the cropped tensor says where it came from.
    RgbImage::from_fn(20, 20, |x, y| Rgb([x as u8 * 10, y as u8 * 10, 0])).save(&path).unwrap();
    let mut lm = [0f32; 10];
    lm[2] = 14.0;
    lm[7] = 6.0;
    let sample = Sample { path, key: "x.png".into(), labels: vec![], landmarks: Some(lm) };
    let pre = Preprocess { crop: Crop::Nose { size: 4 }, input: InputSpec { mean: [0.0; 3], std: [1.0; 3], ..spec(Layout::Nhwc, 4, 4) } };
    let mut out = vec![0f32; 48];
    let window = pre.load_into(&sample, &mut out).unwrap();
    // Window (12, 4, 4, 4): first pixel is (12, 4), last is (15, 7).
    assert_eq!((window.x, window.y, window.w, window.h), (12.0, 4.0, 4.0, 4.0), "the window comes back in image pixels");
    assert_eq!(window.to_fractions(&lm)[2], 0.5, "the nose is in the middle of its crop");
    assert_eq!((out[0] * 255.0).round(), 120.0);
    assert_eq!((out[1] * 255.0).round(), 40.0);
    assert_eq!((out[45] * 255.0).round(), 150.0);
    assert_eq!((out[46] * 255.0).round(), 70.0);
}

#[test]
fn grayscale_and_cmyk_jpegs_become_rgb() {
    let dir = tempfile::tempdir().unwrap();
    let code = "import sys; from PIL import Image\n\
                Image.new('L', (8, 6), 200).save(sys.argv[1] + '/gray.jpg')\n\
                Image.new('CMYK', (8, 6), (0, 255, 255, 0)).save(sys.argv[1] + '/cmyk.jpg')";
    let Some(py) = common::python() else { return };
    let ok = Command::new(py).args(["-c", code]).arg(dir.path()).status().unwrap();
    assert!(ok.success());
    // as predict decodes whole images: libjpeg-turbo for the gray one, the image crate for CMYK
    let gray = decode_whole(&dir.path().join("gray.jpg")).unwrap();
    assert_eq!(gray.dimensions(), (8, 6));
    let p = gray.get_pixel(3, 3).0;
    assert!(p[0] == p[1] && p[1] == p[2] && (p[0] as i32 - 200).abs() <= 2, "{p:?}");
    let red = decode_whole(&dir.path().join("cmyk.jpg")).unwrap().get_pixel(3, 3).0;
    assert!(red[0] > 200 && red[1] < 60 && red[2] < 60, "CMYK (0,255,255,0) is red, got {red:?}");
    // The model path gives the same.
    let pre = Preprocess { crop: Crop::Original, input: InputSpec { mean: [0.0; 3], std: [1.0; 3], ..spec(Layout::Nhwc, 8, 6) } };
    for (name, want) in [("gray.jpg", p), ("cmyk.jpg", red)] {
        let sample = Sample { path: dir.path().join(name), key: name.into(), labels: vec![], landmarks: None };
        let mut out = vec![0f32; 8 * 6 * 3];
        pre.load_into(&sample, &mut out).unwrap();
        let got: Vec<i32> = out[(3 * 8 + 3) * 3..][..3].iter().map(|v| (v * 255.0).round() as i32).collect();
        assert!(got.iter().zip(want).all(|(g, w)| (g - w as i32).abs() <= 3), "{name}: {got:?} vs {want:?}");
    }
}

/// A camera-size JPEG is decoded by libjpeg-turbo at 1/8 in the DCT and resized the rest of
/// the way; the model input stays within a few levels of decoding it whole and resizing that.
#[test]
fn a_large_jpeg_decoded_at_reduced_scale_matches_the_full_size_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("large.jpg");
    // Smooth content, as in a photo: stripes a few hundred pixels wide in every channel.
    let (w, h) = (3000u32, 2000u32);
    let img = RgbImage::from_fn(w, h, |x, y| {
        let wave = |period: f32, t: f32| (127.5 + 120.0 * (t / period * std::f32::consts::TAU).sin()) as u8;
        Rgb([wave(700.0, x as f32), wave(500.0, y as f32), wave(900.0, (x + y) as f32)])
    });
    img.save_with_format(&path, image::ImageFormat::Jpeg).unwrap();
    let (ow, oh) = (180u32, 120u32); // 3000 / 8 = 375 >= 180: decoded at 1/8 (375 x 250)
    let pre = Preprocess { crop: Crop::Original, input: InputSpec { mean: [0.0; 3], std: [1.0; 3], ..spec(Layout::Nhwc, ow, oh) } };
    let sample = Sample { path: path.clone(), key: "large.jpg".into(), labels: vec![], landmarks: None };
    let mut got = vec![0f32; (ow * oh * 3) as usize];
    pre.load_into(&sample, &mut got).unwrap();
    let full = image::imageops::resize(&image::open(&path).unwrap().into_rgb8(), ow, oh, image::imageops::FilterType::Triangle);
    let diffs: Vec<f32> = got.iter().zip(full.as_raw()).map(|(g, &f)| (g * 255.0 - f as f32).abs()).collect();
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    let max = diffs.iter().cloned().fold(0.0, f32::max);
    assert!(mean < 0.75 && max < 4.0, "reduced-scale decode differs from the full-size one: mean {mean}, max {max} levels");
}

#[test]
fn hash_split_is_stable_and_near_the_percentage() {
    let names: Vec<String> = (0..4000).map(|i| format!("class/img_{i}.jpg")).collect();
    let held: Vec<bool> = names.iter().map(|n| assign(n, 7, 10.0) == Subset::Holdout).collect();
    let share = held.iter().filter(|&&h| h).count() as f64 / names.len() as f64;
    assert!((0.08..0.12).contains(&share), "hold-out share {share}");
    // Another seed gives another split; `_nohash_` variants stay together.
    assert!(names.iter().any(|n| assign(n, 8, 10.0) != assign(n, 7, 10.0)));
    assert_eq!(assign("a/pic_nohash_1.jpg", 3, 50.0), assign("b/pic_nohash_2.jpg", 3, 50.0));
    assert_eq!(assign("x.jpg", 1, 0.0), Subset::Train);
    assert_eq!(assign("x.jpg", 1, 100.0), Subset::Holdout);
}

/// The train/validation subsets of an MTFL folder as `retrain train` and `retrain finetune`
/// read them: (train keys, validation keys).
fn subsets(root: &std::path::Path) -> [(Vec<String>, Vec<String>); 2] {
    let classes = retrain::head::classes::Classes::mtfl("smile").unwrap();
    let names = |l: &retrain::train::data::LabeledImages| l.samples.iter().map(|s| s.name().into_owned()).collect::<Vec<_>>();
    [retrain::train::epochs::VALIDATION_PERCENT, retrain::finetune::phases::VALIDATION_PERCENT].map(|validation_percent| {
        let subsets = retrain::train::data::Subsets { validation_percent, seed: 7, limit: None, test: false };
        let [train, val, _] = subsets.of_mtfl(root, &retrain::train::data::Tasks::one(classes.clone())).unwrap();
        (names(&train), names(&val))
    })
}

#[test]
fn adding_images_moves_no_old_image_between_train_and_validation() {
    let dir = tempfile::tempdir().unwrap();
    let root = common::tiny_mtfl(&dir.path().join("mtfl"), 40);
    let before = subsets(&root);
    // Forty more images, their lines put before and after the old ones.
    let old = std::fs::read_to_string(root.join("training.txt")).unwrap();
    let (mut head, mut tail) = (String::new(), String::new());
    for i in 0..40u32 {
        let key = format!("training/new{i:03}.jpg");
        common::picture(500 + i, 80, 80).save(root.join(&key)).unwrap();
        let line = format!(" {key} 30 50 40 32 48 35 35 45 60 60 1 {} 2 3\r\n", 1 + i % 2);
        if i % 2 == 0 {
            head.push_str(&line)
        } else {
            tail.push_str(&line)
        }
    }
    std::fs::write(root.join("training.txt"), format!("{head}{old}{tail}")).unwrap();
    let after = subsets(&root);
    for (tool, ((train0, val0), (train1, val1))) in ["train", "finetune"].iter().zip(before.iter().zip(&after)) {
        assert_eq!((train0.len() + val0.len(), train1.len() + val1.len()), (40, 80), "{tool}");
        assert!(train0.iter().all(|k| train1.contains(k)), "{tool}: an old training image moved to validation");
        assert!(val0.iter().all(|k| val1.contains(k)), "{tool}: an old validation image moved to training");
        let new_val = val1.iter().filter(|k| k.contains("/new")).count();
        assert!(new_val > 0 && new_val < 40, "{tool}: the new images were not split ({new_val} of 40 held out)");
    }
}

use super::*;

fn spec(layout: Layout, height: u32, width: u32) -> InputSpec {
    InputSpec { layout, height, width, mean: [0.5; 3], std: [0.5; 3], resize: crate::preprocess::Filter::Bilinear }
}

/// A deterministic image with distinct values in the valid range [-1, 1].
fn image(spec: &InputSpec) -> Vec<f32> {
    (0..spec.image_len()).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect()
}

fn all_on() -> Distortions {
    Distortions { flip: true, crop_percent: 10.0, scale_percent: 10.0, brightness_percent: 10.0 }
}

fn distorted(d: &Distortions, s: &InputSpec, img: &[f32], seed: u64) -> Vec<f32> {
    let mut out = img.to_vec();
    d.apply(&mut out, s, seed);
    out
}

fn nhwc_to_nchw(img: &[f32], h: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0.0; img.len()];
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                out[(c * h + y) * w + x] = img[(y * w + x) * 3 + c];
            }
        }
    }
    out
}

#[test]
fn off_is_the_identity() {
    let s = spec(Layout::Nhwc, 7, 5);
    let img = image(&s);
    let off = Distortions::default();
    assert!(off.is_off());
    assert_eq!(off.describe(), "none");
    assert_eq!(distorted(&off, &s, &img, 42), img);
}

#[test]
fn describe_names_what_is_on() {
    assert_eq!(all_on().describe(), "flip,crop=10,scale=10,brightness=10");
    let d = Distortions { scale_percent: 12.5, ..Default::default() };
    assert_eq!(d.describe(), "scale=12.5");
    assert!(!d.is_off());
}

#[test]
fn same_seed_same_output_other_seed_other_output() {
    let s = spec(Layout::Nhwc, 12, 10);
    let img = image(&s);
    let a = distorted(&all_on(), &s, &img, 3);
    assert_eq!(a.len(), img.len());
    assert_eq!(a, distorted(&all_on(), &s, &img, 3));
    assert_ne!(a, distorted(&all_on(), &s, &img, 4));
    assert_ne!(a, img);
}

#[test]
fn flip_mirrors_or_keeps_and_twice_restores() {
    let s = spec(Layout::Nhwc, 4, 5);
    let img = image(&s);
    let flip = Distortions { flip: true, ..Default::default() };
    let mirrored: Vec<f32> = (0..4).flat_map(|y| (0..5).rev().flat_map(move |x| (0..3).map(move |c| (y * 5 + x) * 3 + c))).map(|i| img[i]).collect();
    let mut flipped_seen = [false; 2];
    for seed in 0..20 {
        let once = distorted(&flip, &s, &img, seed);
        assert!(once == img || once == mirrored, "seed {seed}: neither kept nor mirrored");
        flipped_seen[(once == mirrored) as usize] = true;
        assert_eq!(distorted(&flip, &s, &once, seed), img, "the same coin twice restores the image");
    }
    assert_eq!(flipped_seen, [true, true], "both outcomes occur over 20 seeds");
}

#[test]
fn brightness_stays_in_range_and_scales_raw_values() {
    let s = spec(Layout::Nchw, 6, 6);
    let img = image(&s);
    let d = Distortions { brightness_percent: 30.0, ..Default::default() };
    for seed in 0..10 {
        let out = distorted(&d, &s, &img, seed);
        assert!(out.iter().all(|v| (-1.0..=1.0).contains(v)), "values leave [-1, 1]");
        // Raw = v * 0.5 + 0.5; unclamped raw values share one factor in [0.7, 1.3].
        let ratios: Vec<f32> = img.iter().zip(&out).filter(|(a, b)| **a > -0.9 && **b < 1.0).map(|(a, b)| (b * 0.5 + 0.5) / (a * 0.5 + 0.5)).collect();
        let f = ratios[0];
        assert!((0.7..=1.3).contains(&f), "factor {f}");
        assert!(ratios.iter().all(|r| (r - f).abs() < 1e-4), "one factor per image");
    }
}

#[test]
fn crop_and_scale_keep_a_constant_image_constant() {
    let s = spec(Layout::Nhwc, 9, 9);
    let img = vec![0.25; s.image_len()];
    let d = Distortions { crop_percent: 20.0, scale_percent: 20.0, ..Default::default() };
    for seed in 0..5 {
        assert!(distorted(&d, &s, &img, seed).iter().all(|v| (v - 0.25).abs() < 1e-6));
    }
}

#[test]
fn crop_zooms_in_on_a_gradient() {
    // A horizontal ramp: a zoomed window spans a smaller range of values than the whole image.
    let s = spec(Layout::Nchw, 8, 40);
    let img: Vec<f32> = (0..s.image_len()).map(|i| (i % 40) as f32 / 40.0).collect();
    let d = Distortions { crop_percent: 50.0, ..Default::default() };
    let out = distorted(&d, &s, &img, 1);
    let row = &out[..40];
    let span = row[39] - row[0];
    assert!(span > 0.0 && span < 39.0 / 40.0 * 0.8, "span {span}");
    assert!(row.windows(2).all(|p| p[1] >= p[0]), "still increasing");
}

#[test]
fn nchw_and_nhwc_give_the_same_pixels() {
    let (h, w) = (10, 8);
    let hwc = spec(Layout::Nhwc, h, w);
    let chw = spec(Layout::Nchw, h, w);
    let img = image(&hwc);
    for seed in 0..5 {
        let a = nhwc_to_nchw(&distorted(&all_on(), &hwc, &img, seed), h as usize, w as usize);
        let b = distorted(&all_on(), &chw, &nhwc_to_nchw(&img, h as usize, w as usize), seed);
        assert_eq!(a, b);
    }
}

#[test]
fn check_refuses_nonsense() {
    assert!(all_on().check().is_ok());
    assert!(Distortions { crop_percent: -1.0, ..Default::default() }.check().is_err());
    assert!(Distortions { brightness_percent: 100.0, ..Default::default() }.check().is_err());
    assert!(Distortions { scale_percent: f32::NAN, ..Default::default() }.check().is_err());
}

#[test]
fn landmarks_move_with_the_pixels() {
    let s = spec(Layout::Nhwc, 40, 40);
    let (px, py) = (9usize, 26usize);
    let mut img = vec![-1.0; s.image_len()];
    // a bright 3x3 blob centred on the landmark's pixel
    for y in py - 1..=py + 1 {
        for x in px - 1..=px + 1 {
            img[(y * 40 + x) * 3] = if (x, y) == (px, py) { 1.0 } else { 0.5 };
        }
    }
    let d = Distortions { flip: true, crop_percent: 10.0, scale_percent: 20.0, brightness_percent: 0.0 };
    let mut flipped = 0;
    for seed in 0..20 {
        let out = distorted(&d, &s, &img, seed);
        let brightest = (0..40 * 40).max_by(|&a, &b| out[a * 3].total_cmp(&out[b * 3])).unwrap();
        let (bx, by) = ((brightest % 40) as f32 + 0.5, (brightest / 40) as f32 + 0.5);
        let mut points = [0f32; 10];
        points[..5].fill((px as f32 + 0.5) / 40.0);
        points[5..].fill((py as f32 + 0.5) / 40.0);
        d.move_landmarks(&mut points, &s, seed);
        flipped += usize::from(points[0] > 0.5);
        for j in 0..5 {
            assert!(
                (points[j] * 40.0 - bx).abs() <= 1.0 && (points[j + 5] * 40.0 - by).abs() <= 1.0,
                "seed {seed}: landmark {j} at ({}, {}), blob at ({bx}, {by})",
                points[j] * 40.0,
                points[j + 5] * 40.0
            );
        }
    }
    assert!(flipped > 0 && flipped < 20, "some draws flip, some do not ({flipped} of 20)");
}

#[test]
fn a_flip_swaps_left_and_right_landmarks() {
    let s = spec(Layout::Nchw, 10, 10);
    let d = Distortions { flip: true, ..Distortions::default() };
    let seed = (0..).find(|&k| Draws::new(k).flip).unwrap();
    let mut p = [0.2, 0.8, 0.5, 0.3, 0.7, 0.1, 0.2, 0.5, 0.8, 0.9];
    d.move_landmarks(&mut p, &s, seed);
    let want = [0.2, 0.8, 0.5, 0.3, 0.7, 0.2, 0.1, 0.5, 0.9, 0.8];
    assert!(p.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{p:?}");
}

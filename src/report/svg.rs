//! Minimal line charts as self-contained SVG: axes, ticks, legend, one polyline per series.
//! Enough for activation profiles and pruning curves, and embeddable in HTML reports.

use std::fmt::Write;

pub struct Series {
    pub name: String,
    pub colour: &'static str,
    pub points: Vec<(f64, f64)>,
}

pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Fixed y range (e.g. 0..1 for rates); otherwise from the data.
    pub y_range: Option<(f64, f64)>,
    /// A labelled vertical marker, e.g. where pruning stopped.
    pub marker: Option<(f64, String)>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| span / s <= 6.0).unwrap_or(10.0 * mag);
    // Each tick is k * step, rounded to 12 decimals: 3 * 0.2 is 0.6000000000000001 in binary
    // and would print so.
    let first = (lo / step).ceil() as i64;
    let mut out = vec![];
    let mut k = first;
    while k as f64 * step <= hi + 1e-9 * step {
        out.push((k as f64 * step * 1e12).round() / 1e12);
        k += 1;
    }
    out
}

impl Chart {
    pub fn to_svg(&self) -> String {
        let (w, h, ml, mr, mt, mb) = (720.0, 420.0, 70.0, 160.0, 40.0, 55.0);
        let pts = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in pts.filter(|p| p.0.is_finite() && p.1.is_finite()) {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        y0 = y0.min(0.0);
        if let Some((lo, hi)) = self.y_range {
            (y0, y1) = (lo.min(y0), hi.max(y1));
        }
        if y1 <= y0 {
            y1 = y0 + 1.0;
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        let px = |x: f64| ml + (x - x0) / (x1 - x0) * (w - ml - mr);
        let py = |y: f64| h - mb - (y - y0) / (y1 - y0) * (h - mt - mb);
        let mut s = String::new();
        let _ = write!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#);
        let _ = write!(s, r#"<rect width="{w}" height="{h}" fill="white"/><text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#, (w - mr + ml) / 2.0, esc(&self.title));
        for t in nice_ticks(y0, y1) {
            let _ = write!(s, r##"<line x1="{ml}" x2="{}" y1="{y}" y2="{y}" stroke="#e4e4e4"/><text x="{}" y="{}" text-anchor="end">{}</text>"##, w - mr, ml - 6.0, py(t) + 4.0, fmt_tick(t), y = py(t));
        }
        for t in nice_ticks(x0, x1) {
            let _ = write!(s, r##"<line x1="{x}" x2="{x}" y1="{mt}" y2="{}" stroke="#f0f0f0"/><text x="{x}" y="{}" text-anchor="middle">{}</text>"##, h - mb, h - mb + 16.0, fmt_tick(t), x = px(t));
        }
        let _ = write!(s, r#"<rect x="{ml}" y="{mt}" width="{}" height="{}" fill="none" stroke="black"/>"#, w - ml - mr, h - mt - mb);
        let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#, (w - mr + ml) / 2.0, h - 12.0, esc(&self.x_label));
        let _ = write!(s, r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#, (h - mb + mt) / 2.0, (h - mb + mt) / 2.0, esc(&self.y_label));
        if let Some((x, label)) = &self.marker {
            let _ = write!(s, r##"<line x1="{0}" x2="{0}" y1="{mt}" y2="{1}" stroke="#555" stroke-dasharray="5,4"/><text x="{2}" y="{3}" fill="#555">{4}</text>"##, px(*x), h - mb, px(*x) + 4.0, mt + 14.0, esc(label));
        }
        for (i, series) in self.series.iter().enumerate() {
            let path: Vec<String> = series.points.iter().filter(|p| p.0.is_finite() && p.1.is_finite()).map(|&(x, y)| format!("{:.2},{:.2}", px(x), py(y))).collect();
            let _ = write!(s, r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#, series.colour, path.join(" "));
            let ly = mt + 10.0 + 20.0 * i as f64;
            let _ = write!(s, r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#, w - mr + 10.0, w - mr + 30.0, series.colour, w - mr + 35.0, ly + 4.0, esc(&series.name));
        }
        s.push_str("</svg>");
        s
    }
}

fn fmt_tick(t: f64) -> String {
    if t.abs() >= 1000.0 || (t != 0.0 && t.abs() < 0.01) { format!("{t:.1e}") } else { format!("{}", (t * 1000.0).round() / 1000.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_every_series_and_escapes_text() {
        let c = Chart {
            title: "a < b".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            y_range: Some((0.0, 1.0)),
            marker: Some((0.5, "stop".into())),
            series: vec![
                Series { name: "clean".into(), colour: "#1f77b4", points: vec![(0.0, 1.0), (1.0, 2.0)] },
                Series { name: "triggered".into(), colour: "#d62728", points: vec![(0.0, 0.5), (1.0, f64::NAN)] },
            ],
        };
        let s = c.to_svg();
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(s.contains("a &lt; b") && !s.contains("NaN"));
        assert!(s.contains("stroke-dasharray") && s.contains(">stop<"));
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(nice_ticks(0.0, 1.0), vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(nice_ticks(0.05, 0.31), vec![0.05, 0.1, 0.15, 0.2, 0.25, 0.3]);
    }
}

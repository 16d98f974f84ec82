//! `--html FILE`: a self-contained report (inline CSS and SVG, no network
//! resources): summary tables, the finality latency distribution, TPS and
//! latency over time, masternode CPU over time, and the `--find-max` steps.

use std::fmt::Write as _;

use crate::procstat::Watched;
use crate::report::{Percentiles, StepResult};

const W: f64 = 760.0;
const H: f64 = 300.0;
const ML: f64 = 64.0;
const MR: f64 = 24.0;
const MT: f64 = 44.0;
const MB: f64 = 46.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round step giving about `n` ticks over `span`.
fn tick_step(span: f64, n: usize) -> f64 {
    let raw = span.max(1e-9) / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

/// The first round tick at or above `hi`: the top of a value axis from 0.
fn axis_top(hi: f64) -> f64 {
    let step = tick_step(hi, 5);
    ((hi / step).ceil() * step).max(step)
}

/// About `n` round tick values within `[lo, hi]`.
fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let step = tick_step(hi - lo, n);
    let mut v = Vec::new();
    let mut t = (lo / step).ceil() * step;
    while t <= hi + step * 1e-9 {
        v.push(t);
        t += step;
    }
    v
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{}", (v * 10.0).round() / 10.0)
    } else {
        format!("{}", (v * 1000.0).round() / 1000.0)
    }
}

struct Frame {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
    log_x: bool,
}

impl Frame {
    fn px(&self, x: f64) -> f64 {
        let (a, b, x) = if self.log_x {
            (self.x0.log10(), self.x1.log10(), x.max(self.x0).log10())
        } else {
            (self.x0, self.x1, x)
        };
        ML + (x - a) / (b - a).max(1e-12) * (W - ML - MR)
    }
    fn py(&self, y: f64) -> f64 {
        H - MB - (y - self.y0) / (self.y1 - self.y0).max(1e-12) * (H - MT - MB)
    }
}

/// Axes, grid, labels and legend; returns the opening of the SVG.
fn axes(f: &Frame, title: &str, xl: &str, yl: &str, legend: &[(&str, &str)]) -> String {
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        s,
        r#"<text x="{}" y="17" font-size="14" font-weight="bold">{}</text>"#,
        ML,
        esc(title)
    );
    for t in ticks(f.y0, f.y1, 5) {
        let y = f.py(t);
        let _ = write!(
            s,
            r##"<line x1="{ML}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - MR,
            ML - 6.0,
            y + 4.0,
            fmt_tick(t)
        );
    }
    let xt: Vec<f64> = if f.log_x {
        let mut v = Vec::new();
        let mut d = 10f64.powf(f.x0.log10().floor());
        while d <= f.x1 * 1.0001 {
            for m in [1.0, 2.0, 5.0] {
                let t = d * m;
                if t >= f.x0 && t <= f.x1 {
                    v.push(t);
                }
            }
            d *= 10.0;
        }
        v
    } else {
        ticks(f.x0, f.x1, 8)
    };
    for t in xt {
        let x = f.px(t);
        let _ = write!(
            s,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{MT}" y2="{}" stroke="#eee"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            H - MB,
            H - MB + 15.0,
            fmt_tick(t)
        );
    }
    let _ = write!(
        s,
        r##"<rect x="{ML}" y="{MT}" width="{}" height="{}" fill="none" stroke="#888"/><text x="{}" y="{}" text-anchor="middle">{}</text><text transform="translate(14,{}) rotate(-90)" text-anchor="middle">{}</text>"##,
        W - ML - MR,
        H - MT - MB,
        ML + (W - ML - MR) / 2.0,
        H - 8.0,
        esc(xl),
        MT + (H - MT - MB) / 2.0,
        esc(yl)
    );
    let mut lx = W - MR;
    for (name, color) in legend.iter().rev() {
        lx -= 14.0 + 6.5 * name.len() as f64;
        let _ = write!(
            s,
            r#"<rect x="{lx:.1}" y="25" width="10" height="10" fill="{color}"/><text x="{:.1}" y="34">{}</text>"#,
            lx + 13.0,
            esc(name)
        );
    }
    s
}

type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

fn line_chart(title: &str, xl: &str, yl: &str, series: &[Series<'_>]) -> String {
    let pts = series.iter().flat_map(|s| s.2.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return format!("<p>{}: no data</p>", esc(title));
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let f = Frame {
        x0,
        x1,
        y0: 0.0,
        y1: axis_top(y1.max(1e-6)),
        log_x: false,
    };
    let legend: Vec<(&str, &str)> = series.iter().map(|s| (s.0, s.1)).collect();
    let mut s = axes(&f, title, xl, yl, &legend);
    for (_, color, p) in series {
        let d: Vec<String> = p
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", f.px(x), f.py(y)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{}"/>"#,
            d.join(" ")
        );
        if p.len() <= 40 {
            for &(x, y) in p {
                let _ = write!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"/>"#,
                    f.px(x),
                    f.py(y)
                );
            }
        }
    }
    s.push_str("</svg>");
    s
}

/// Finality latency histogram on log-spaced bins, with percentile marks.
fn latency_chart(r: &StepResult) -> String {
    let h = &r.finality;
    if h.is_empty() {
        return "<p>No finalized transactions.</p>".into();
    }
    let lo = (h.min().max(1) as f64 / 1000.0).max(0.001);
    let hi = (h.max() as f64 / 1000.0).max(lo * 1.5);
    let bins = 60usize;
    let (a, b) = (lo.log10(), (hi * 1.0001).log10());
    let width = (b - a) / bins as f64;
    let mut counts = vec![0u64; bins];
    for v in h.iter_recorded() {
        let ms = v.value_iterated_to() as f64 / 1000.0;
        let k = (((ms.max(lo)).log10() - a) / width).floor() as usize;
        counts[k.min(bins - 1)] += v.count_at_value();
    }
    let ymax = *counts.iter().max().unwrap_or(&1) as f64;
    let f = Frame {
        x0: lo,
        x1: hi * 1.0001,
        y0: 0.0,
        y1: axis_top(ymax),
        log_x: true,
    };
    let mut s = axes(
        &f,
        "Finality latency distribution (submit to TimeProof)",
        "latency, ms (log scale)",
        "transactions",
        &[("finalized", COLORS[0])],
    );
    for (k, &c) in counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        let xa = f.px(10f64.powf(a + k as f64 * width));
        let xb = f.px(10f64.powf(a + (k + 1) as f64 * width));
        let y = f.py(c as f64);
        let _ = write!(
            s,
            r#"<rect x="{xa:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{c}</title></rect>"#,
            (xb - xa - 0.5).max(0.5),
            H - MB - y,
            COLORS[0]
        );
    }
    let p = Percentiles::of(h);
    for (k, (name, v)) in [("p50", p.p50), ("p99", p.p99), ("p99.9", p.p999)]
        .into_iter()
        .enumerate()
    {
        let x = f.px(v.max(lo));
        // Labels near the right edge go on the line's left side.
        let (tx, anchor) = if x > W - MR - 90.0 {
            (x - 3.0, "end")
        } else {
            (x + 3.0, "start")
        };
        let _ = write!(
            s,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{MT}" y2="{}" stroke="#d62728" stroke-dasharray="4 3"/><text x="{tx:.1}" y="{}" fill="#d62728" text-anchor="{anchor}">{name} {}</text>"##,
            H - MB,
            MT + 12.0 + 13.0 * k as f64,
            fmt_tick(v)
        );
    }
    s.push_str("</svg>");
    s
}

fn step_charts(out: &mut String, r: &StepResult, watched: &[Watched]) {
    out.push_str(&latency_chart(r));
    let per_s = |f: &dyn Fn(&crate::report::Bucket) -> u64| -> Vec<(f64, f64)> {
        r.series
            .iter()
            .map(|b| (b.t_s, f(b) as f64 / r.bucket_s))
            .collect()
    };
    out.push_str(&line_chart(
        "Throughput over time",
        "seconds since the step started",
        "transactions / s",
        &[
            ("submitted", COLORS[0], per_s(&|b| b.sent)),
            ("finalized", COLORS[2], per_s(&|b| b.finalized)),
            ("rejected", COLORS[1], per_s(&|b| b.rejected)),
        ],
    ));
    let lat = |f: &dyn Fn(&crate::report::Bucket) -> Option<f64>| -> Vec<(f64, f64)> {
        r.series
            .iter()
            .filter_map(|b| f(b).map(|v| (b.t_s, v)))
            .collect()
    };
    out.push_str(&line_chart(
        "Finality latency over time (by submission time)",
        "seconds since the step started",
        "ms",
        &[
            ("p99", COLORS[1], lat(&|b| b.p99_ms)),
            ("p50", COLORS[0], lat(&|b| b.p50_ms)),
        ],
    ));
    if !r.cpu_series.is_empty() {
        let series: Vec<Series<'_>> = watched
            .iter()
            .enumerate()
            .map(|(i, w)| {
                (
                    w.name.as_str(),
                    COLORS[i % COLORS.len()],
                    r.cpu_series
                        .iter()
                        .map(|p| (p.t_s, p.cpu_pct.get(i).copied().unwrap_or(0.0)))
                        .collect(),
                )
            })
            .collect();
        out.push_str(&line_chart(
            "CPU over time (100% = one core)",
            "seconds since the step started",
            "CPU %",
            &series,
        ));
    }
}

fn summary_table(out: &mut String, r: &StepResult, watched: &[Watched]) {
    let p = Percentiles::of(&r.finality);
    let rows: Vec<(&str, String)> = vec![
        (
            "target",
            format!(
                "{:.0} payments/s for {:.1} s after a {:.1} s ramp",
                r.target_tps,
                r.steady.as_secs_f64(),
                r.ramp.as_secs_f64()
            ),
        ),
        (
            "sent",
            format!("{} transactions ({} payments)", r.sent, r.payments),
        ),
        ("finalized", r.finalized.to_string()),
        (
            "rejected",
            format!(
                "{} {}",
                r.rejected,
                r.reasons
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        ("plain payments refused", r.rejected_single.to_string()),
        ("lost", format!("{} (late {})", r.lost, r.late)),
        ("double-spend pairs", r.double_spend_pairs.to_string()),
        (
            "pairs with both sides finalized",
            r.double_spend_both_finalized.to_string(),
        ),
        (
            "pairs: one side final / both rejected",
            format!(
                "{} / {}",
                r.double_spend_one_finalized, r.double_spend_both_rejected
            ),
        ),
        (
            "achieved",
            format!("{:.1} finalized/s ({:.1} offered)", r.tps, r.offered_tps),
        ),
        (
            "finality ms",
            format!(
                "p50 {:.2} · p90 {:.2} · p99 {:.2} · p99.9 {:.2} · max {:.2}",
                p.p50, p.p90, p.p99, p.p999, p.max
            ),
        ),
        ("send lag p99 / max ms", {
            let l = Percentiles::of(&r.send_lag);
            format!("{:.2} / {:.2}", l.p99, l.max)
        }),
        (
            "anomalies",
            format!(
                "rejected then finalized {}, bad proofs {}, connection errors {}",
                r.rejected_then_finalized,
                r.bad_proofs,
                r.conn_errors.len()
            ),
        ),
    ];
    out.push_str("<table>");
    for (k, v) in rows {
        let _ = write!(out, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
    }
    out.push_str("</table>");
    if let Some(a) = &r.audit {
        out.push_str("<table><tr><th>masternodes' view of the coins</th><th>coins</th><th>final on all</th><th>not converged</th><th>locked for good</th><th>free</th><th>conflicting finality</th></tr>");
        for (name, c) in &a.groups {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(name),
                c.coins,
                c.final_everywhere,
                c.not_converged,
                c.locked_for_good,
                c.free,
                c.conflicting_finality
            );
        }
        out.push_str("</table>");
        for e in &a.errors {
            let _ = write!(out, "<p class=err>{}</p>", esc(e));
        }
    }
    if !r.usage.is_empty() {
        out.push_str("<table><tr><th>process</th><th>CPU %</th><th>of which kernel %</th><th>CPU s</th><th>RSS MB</th><th>peak RSS MB</th></tr>");
        for (u, w) in r.usage.iter().zip(watched) {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{:.2}</td><td>{:.1}</td><td>{:.1}</td></tr>",
                esc(&w.name),
                u.cpu_pct,
                u.sys_pct,
                u.cpu_seconds,
                u.rss_mb,
                u.peak_rss_mb
            );
        }
        out.push_str("</table>");
    }
    for e in r.conn_errors.iter().take(10) {
        let _ = write!(out, "<p class=err>{}</p>", esc(e));
    }
}

/// The whole report. `steps` holds every step with its verdict (find-max)
/// and `best` the index of the step the summary is about.
pub fn render(
    title: &str,
    setup: &[(String, String)],
    steps: &[(StepResult, Option<String>)],
    best: Option<usize>,
    watched: &[Watched],
) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html><html><head><meta charset=utf-8><title>{}</title><style>\
         body{{font-family:sans-serif;max-width:820px;margin:24px auto;color:#222}}\
         table{{border-collapse:collapse;margin:10px 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}}\
         th{{background:#f4f4f4}}svg{{display:block;margin:14px 0}}.err{{color:#b00}}\
         </style></head><body><h1>{}</h1>",
        esc(title),
        esc(title)
    );
    out.push_str("<table>");
    for (k, v) in setup {
        let _ = write!(out, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
    }
    out.push_str("</table>");
    if steps.len() > 1 {
        out.push_str("<h2>Steps</h2><table><tr><th>target /s</th><th>achieved /s</th><th>p50 ms</th><th>p99 ms</th><th>lost</th><th>both final</th><th>verdict</th></tr>");
        for (r, v) in steps {
            let p = Percentiles::of(&r.finality);
            let _ = write!(
                out,
                "<tr><td>{:.0}</td><td>{:.1}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                r.target_tps,
                r.tps,
                p.p50,
                p.p99,
                r.lost,
                r.double_spend_both_finalized,
                esc(v.as_deref().unwrap_or(""))
            );
        }
        out.push_str("</table>");
        let pts = |f: &dyn Fn(&StepResult) -> f64| -> Vec<(f64, f64)> {
            steps.iter().map(|(r, _)| (r.target_tps, f(r))).collect()
        };
        out.push_str(&line_chart(
            "Achieved vs offered rate",
            "target payments / s",
            "finalized / s",
            &[
                ("achieved", COLORS[2], pts(&|r| r.tps)),
                ("target", "#999", pts(&|r| r.target_tps)),
            ],
        ));
        out.push_str(&line_chart(
            "Finality p99 per step",
            "target payments / s",
            "p99 ms",
            &[("p99", COLORS[1], pts(&|r| Percentiles::of(&r.finality).p99))],
        ));
    }
    for (i, (r, v)) in steps.iter().enumerate() {
        let head = if steps.len() == 1 {
            "Result".to_string()
        } else {
            format!(
                "Step {} — {:.0} payments/s{}{}",
                i + 1,
                r.target_tps,
                if best == Some(i) {
                    " (highest sustained)"
                } else {
                    ""
                },
                v.as_deref().map(|v| format!(": {v}")).unwrap_or_default()
            )
        };
        let _ = write!(out, "<h2>{}</h2>", esc(&head));
        summary_table(&mut out, r, watched);
        if steps.len() == 1 || best == Some(i) || i + 1 == steps.len() {
            step_charts(&mut out, r, watched);
        }
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(0.0, 1234.0, 5);
        assert_eq!(t[1], 250.0);
        assert_eq!(axis_top(24.2), 25.0);
        assert_eq!(axis_top(1000.0), 1000.0);
        assert_eq!(axis_top(1001.0), 1250.0);
        assert_eq!(esc("<a&b>"), "&lt;a&amp;b&gt;");
    }

    #[test]
    fn line_chart_is_svg() {
        let s = line_chart(
            "t",
            "x",
            "y",
            &[("a", "#000", vec![(0.0, 1.0), (1.0, 2.0)])],
        );
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        assert!(s.contains("polyline"));
        assert!(line_chart("t", "x", "y", &[("a", "#000", vec![])]).contains("no data"));
    }
}

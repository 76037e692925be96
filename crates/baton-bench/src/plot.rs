//! The timeline picture, as SVG: latency percentile bands per 100 ms (log scale),
//! failures per 100 ms, reload triggers marked. Written by hand: no font or drawing
//! library needed, and the file opens in any browser.

use std::fmt::Write as _;

use crate::report::Report;

const W: f64 = 1200.0;
const H: f64 = 600.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 70.0;
const LAT_H: f64 = 330.0;
const GAP: f64 = 40.0;
const FAIL_H: f64 = 90.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub(crate) fn svg(r: &Report) -> String {
    let dur = r.duration_s.max(0.1);
    let x = |t: f64| LEFT + (t / dur) * (W - LEFT - RIGHT);
    let step = crate::report::BUCKET_US as f64 / 1e6;
    // Only whole buckets: the last, partial one would reach past the frame, and its
    // count of failures per 100 ms would dip for want of time.
    let timeline: Vec<&crate::report::Bucket> = r
        .timeline
        .iter()
        .filter(|b| b.t_s + step <= dur + 1e-9)
        .collect();
    let lat_values = timeline
        .iter()
        .flat_map(|b| [b.p50_ms, b.max_ms])
        .flatten()
        .filter(|v| *v > 0.0);
    let (mut lo, mut hi) = (f64::MAX, 0.0f64);
    for v in lat_values {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if hi <= 0.0 {
        (lo, hi) = (0.1, 10.0);
    }
    let lo_exp = lo.max(0.001).log10().floor();
    let hi_exp = hi.log10().ceil().max(lo_exp + 1.0);
    let y = |ms: f64| {
        let e = ms.max(10f64.powf(lo_exp)).log10();
        TOP + LAT_H - (e - lo_exp) / (hi_exp - lo_exp) * LAT_H
    };
    let fail_top = TOP + LAT_H + GAP;
    let max_fail = timeline.iter().map(|b| b.failed).max().unwrap_or(0);

    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="24" font-size="16" font-weight="bold">{}</text>
<text x="{LEFT}" y="44" fill="#444">{} requests, {} failed, {} reloads; {:.0} req/s; p99 steady {} ms{}</text>
"##,
        esc(&r.label),
        r.requests,
        r.failed,
        r.reloads.count,
        r.rps,
        r.latency_ms
            .steady
            .p99
            .map_or("-".into(), |v| format!("{v:.2}")),
        // Without reloads there are no reload windows to speak of.
        if r.reloads.count > 0 {
            format!(
                ", in reload windows {} ms",
                r.latency_ms
                    .reload_windows
                    .p99
                    .map_or("-".into(), |v| format!("{v:.2}"))
            )
        } else {
            String::new()
        },
    );
    // Reload windows: from the trigger's start to its command's end, at least 2 px.
    for t in &r.reloads.triggers {
        let (a, b) = (x(t.start_s), x(t.end_s).max(x(t.start_s) + 2.0));
        let color = if t.exit_code == Some(0) {
            "#f5a623"
        } else {
            "#d0021b"
        };
        let _ = writeln!(
            s,
            r#"<rect x="{a:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="{color}" opacity="0.25"/><line x1="{a:.1}" x2="{a:.1}" y1="{TOP}" y2="{:.1}" stroke="{color}" stroke-width="1"/>"#,
            b - a,
            LAT_H + GAP + FAIL_H,
            fail_top + FAIL_H
        );
    }
    // Latency axis, log scale.
    let mut e = lo_exp;
    while e <= hi_exp + 1e-9 {
        let v = 10f64.powf(e);
        let yy = y(v);
        let label = if v >= 1.0 {
            format!("{v:.0}")
        } else {
            format!("{v}")
        };
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            yy + 4.0
        );
        e += 1.0;
    }
    let _ = writeln!(
        s,
        r#"<text x="18" y="{:.1}" transform="rotate(-90 18 {:.1})" text-anchor="middle">latency, ms (log)</text>"#,
        TOP + LAT_H / 2.0,
        TOP + LAT_H / 2.0
    );
    // Percentile lines, broken where a bucket has no request.
    type Pick = fn(&crate::report::Bucket) -> Option<f64>;
    let series: [(&str, &str, Pick); 4] = [
        ("max", "#bbbbbb", |b| b.max_ms),
        ("p99", "#d0021b", |b| b.p99_ms),
        ("p90", "#f5a623", |b| b.p90_ms),
        ("p50", "#4a90e2", |b| b.p50_ms),
    ];
    for (i, (name, color, pick)) in series.iter().enumerate() {
        let mut d = String::new();
        let mut pen_down = false;
        for b in &timeline {
            match pick(b) {
                Some(v) => {
                    let _ = write!(
                        d,
                        "{}{:.1},{:.1} ",
                        if pen_down { "L" } else { "M" },
                        x(b.t_s + step / 2.0),
                        y(v)
                    );
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        let _ = writeln!(
            s,
            r#"<path d="{d}" fill="none" stroke="{color}" stroke-width="1.5"/>"#
        );
        let lx = W - RIGHT - 260.0 + i as f64 * 65.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.1}" x2="{:.1}" y1="58" y2="58" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="62">{name}</text>"#,
            lx + 18.0,
            lx + 22.0
        );
    }
    // Failures per bucket.
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{fail_top:.1}" width="{:.1}" height="{FAIL_H}" fill="none" stroke="#ccc"/><text x="18" y="{:.1}" transform="rotate(-90 18 {:.1})" text-anchor="middle">failed / 100 ms</text>"##,
        W - LEFT - RIGHT,
        fail_top + FAIL_H / 2.0,
        fail_top + FAIL_H / 2.0
    );
    // Failures of the partial bucket left out above: said, not drawn.
    let undrawn: u64 = r.timeline.iter().map(|b| b.failed).sum::<u64>()
        - timeline.iter().map(|b| b.failed).sum::<u64>();
    if undrawn > 0 {
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#d0021b">+{undrawn} failed in the last, partial 100 ms (not drawn)</text>"##,
            W - RIGHT - 4.0,
            fail_top + 14.0
        );
    }
    if r.failed == 0 {
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#2a7">no failed request</text>"##,
            (W + LEFT - RIGHT) / 2.0,
            fail_top + FAIL_H / 2.0 + 4.0
        );
    } else if max_fail > 0 {
        let bw = (x(step) - x(0.0)).max(1.0);
        for b in timeline.iter().filter(|b| b.failed > 0) {
            let h = b.failed as f64 / max_fail as f64 * (FAIL_H - 4.0);
            let _ = writeln!(
                s,
                r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="#d0021b"/>"##,
                x(b.t_s),
                fail_top + FAIL_H - h,
                bw.min(W - RIGHT - x(b.t_s)),
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{max_fail}</text>"#,
            LEFT - 6.0,
            fail_top + 10.0
        );
    }
    // Time axis.
    let tick = [
        0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    ]
    .into_iter()
    .find(|t| dur / t <= 20.0)
    .unwrap_or(dur / 10.0);
    let axis_y = fail_top + FAIL_H;
    let mut t = 0.0;
    while t <= dur + 1e-9 {
        let xx = x(t);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{axis_y:.1}" y2="{:.1}" stroke="#888"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            axis_y + 5.0,
            axis_y + 18.0,
            if tick < 1.0 {
                format!("{t:.1}")
            } else {
                format!("{t:.0}")
            }
        );
        t += tick;
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">time, s (shaded: reload command running; line: trigger)</text>"##,
        (W + LEFT - RIGHT) / 2.0,
        axis_y + 36.0
    );
    s.push_str("</svg>\n");
    s
}

//! The report's small fixes: the plot stays inside its frame (no partial last bucket),
//! no reload-window figure without reloads, each distinct failure printed once with its
//! count.
#![allow(clippy::unwrap_used)]

mod common;

/// The plot's frame: x from LEFT to W - RIGHT (see src/plot.rs).
const FRAME: (f64, f64) = (80.0, 1170.0);

/// The x coordinates of every path point and the right edges of the failure bars.
fn xs(svg: &str) -> (Vec<f64>, Vec<f64>) {
    let mut points = Vec::new();
    let mut bars = Vec::new();
    for line in svg.lines() {
        if let Some(d) = line
            .strip_prefix("<path d=\"")
            .and_then(|rest| rest.split('"').next())
        {
            for p in d.split_whitespace() {
                let x = p.trim_start_matches(['M', 'L']).split(',').next().unwrap();
                points.push(x.parse().unwrap());
            }
        }
        if line.starts_with("<rect") && line.contains("fill=\"#d0021b\"/>") {
            let attr = |name: &str| -> f64 {
                let key = format!(" {name}=\"");
                let from = line.find(&key).unwrap() + key.len();
                line[from..].split('"').next().unwrap().parse().unwrap()
            };
            bars.push(attr("x") + attr("width"));
        }
    }
    (points, bars)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plot_stays_in_its_frame_and_without_reloads_says_nothing_of_reload_windows() {
    let (addr, _) = common::http1_server().await;
    // Every request fails (500), so that every bucket has a failure bar; 1 s of run
    // leaves a partial last bucket (the run ends a little after 1 s).
    let url = format!("http://{addr}/500");
    let run = common::bench_with(
        &[&url, "-c", "2", "-d", "1s", "--max-failures", "1000000000"],
        true,
    )
    .await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    let svg = run.svg.unwrap();
    let (points, bars) = xs(&svg);
    assert!(points.len() >= 4 * 9, "{svg}");
    assert!(bars.len() >= 9, "{svg}");
    for x in points {
        assert!(x >= FRAME.0 && x <= FRAME.1 + 0.05, "point at x {x}");
    }
    for right in bars {
        assert!(right <= FRAME.1 + 0.05, "bar ending at x {right}");
    }
    // The JSON keeps every bucket, the partial last one too.
    let timeline = run.report["timeline"].as_array().unwrap();
    let last = timeline.last().unwrap();
    let duration = run.report["duration_s"].as_f64().unwrap();
    assert!(last["t_s"].as_f64().unwrap() + 0.1 > duration);
    if last["failed"].as_u64().unwrap() > 0 {
        assert!(
            svg.contains("in the last, partial 100 ms (not drawn)"),
            "{svg}"
        );
    }
    // No reloads: neither the plot's subtitle nor the text report speaks of reload
    // windows.
    assert!(!svg.contains("reload windows"), "{svg}");
    assert!(!run.stdout.contains("reload"), "{}", run.stdout);

    // With reloads, the subtitle does.
    let url = format!("http://{addr}/ok");
    let run = common::bench_with(
        &[
            &url,
            "-c",
            "1",
            "-d",
            "600ms",
            "--reload",
            "true",
            "--reload-every",
            "200ms",
            "--window",
            "100ms",
        ],
        true,
    )
    .await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(run.svg.unwrap().contains(", in reload windows "));
    assert!(run.stdout.contains("latency ms  reloads"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_distinct_failure_is_printed_once_with_its_count() {
    let (addr, _) = common::http1_server().await;
    let url = format!("http://{addr}/500");
    let run = common::bench(&[&url, "-n", "6", "-c", "2"]).await;
    assert_eq!(run.code, Some(1));
    let lines: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("failure "))
        .collect();
    assert_eq!(lines.len(), 1, "{}", run.stdout);
    assert!(
        lines[0].contains("status: status 500 (x6; first at "),
        "{}",
        run.stdout
    );
    let messages = run.report["failure_messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert_eq!(messages[0]["class"], "status");
    assert_eq!(messages[0]["message"], "status 500");
    assert_eq!(messages[0]["count"], 6);
    // The sample of the first failures is still there, one entry per request.
    assert_eq!(run.report["first_failures"].as_array().unwrap().len(), 6);
}

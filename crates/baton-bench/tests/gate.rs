//! The gate (the exit status) never passes without the reloads it was asked for, and a
//! bad command line is exit 2 with the fix.
#![allow(clippy::unwrap_used)]

mod common;

/// Regression (issue 27, a new user): with a wrong `--pidfile` every reload failed
/// ("cannot read pidfile", "1 commands failed") and the exit status was 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_command_fails_the_gate() {
    let (addr, _) = common::http1_server().await;
    let url = format!("http://{addr}/ok");
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("no-such.pid");
    let base = [
        url.as_str(),
        "-c",
        "1",
        "-d",
        "700ms",
        "--reload-every",
        "200ms",
        "--window",
        "100ms",
    ];
    for (reload, extra, why) in [
        ("false", None, "the reload command exited with 1"),
        (
            "kill -HUP {pid}",
            Some(pidfile.to_str().unwrap()),
            "cannot read pidfile",
        ),
    ] {
        let mut args = base.to_vec();
        args.extend(["--reload", reload]);
        if let Some(p) = extra {
            args.extend(["--pidfile", p]);
        }
        let run = common::bench(&args).await;
        assert_eq!(run.code, Some(1), "{reload}: {}{}", run.stdout, run.stderr);
        // No request failed: the reloads alone fail it.
        assert_eq!(run.report["failed"], 0);
        let count = run.report["reloads"]["count"].as_u64().unwrap();
        assert!(count >= 2, "{count}");
        assert_eq!(run.report["reloads"]["failed_commands"], count);
        assert_eq!(run.report["gate"]["passed"], false);
        let because = run.report["gate"]["failed_because"][0].as_str().unwrap();
        assert!(
            because.starts_with(&format!("{count} of {count} reload commands failed"))
                && because.contains(why),
            "{because}"
        );
        assert!(
            run.stderr.contains("FAILED: ") && run.stderr.contains(why),
            "{}",
            run.stderr
        );
        assert!(
            run.stdout.contains("gate        FAILED: "),
            "{}",
            run.stdout
        );
    }

    // The same run with a working command passes, and says so.
    let mut args = base.to_vec();
    args.extend(["--reload", "true"]);
    let run = common::bench(&args).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert_eq!(run.report["gate"]["passed"], true);
    assert!(run.stdout.contains("gate        passed"), "{}", run.stdout);
}

/// `--reload` with no room for a trigger in the run, or fewer than `--reloads`: the
/// reloads asked for were not made, the gate fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fewer_reloads_than_asked_for_fail_the_gate() {
    let (addr, _) = common::http1_server().await;
    let url = format!("http://{addr}/ok");
    // The first trigger would come after 1 s; the run lasts 500 ms.
    let run = common::bench(&[&url, "-c", "1", "-d", "500ms", "--reload", "true"]).await;
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert_eq!(run.report["reloads"]["count"], 0);
    assert!(
        run.stderr.contains("no reload command ran"),
        "{}",
        run.stderr
    );
    // Triggers at 0.2, 0.4, 0.6 and 0.8 s fit in 1 s with a 100 ms window: 4 of 6.
    let run = common::bench(&[
        &url,
        "-c",
        "1",
        "-d",
        "1s",
        "--reload",
        "true",
        "--reload-every",
        "200ms",
        "--window",
        "100ms",
        "--reloads",
        "6",
    ])
    .await;
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    let count = run.report["reloads"]["count"].as_u64().unwrap();
    assert!(count < 6);
    assert!(
        run.stderr.contains(&format!(
            "only {count} of the 6 reloads asked for (--reloads)"
        )),
        "{}",
        run.stderr
    );
}

/// A URL without a scheme was exit 3 ("expected an http:// URL", after the run began);
/// it is a bad command line: exit 2, with the URL as it should be.
#[test]
fn a_url_without_a_scheme_is_a_usage_error_that_shows_the_fix() {
    let (code, stderr) = common::usage_error(&["127.0.0.1:8080/"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("`http://127.0.0.1:8080/`"), "{stderr}");
    for (args, what) in [
        (&["ftp://127.0.0.1:9/"][..], "http:// or https://"),
        (&["https://127.0.0.1:9/"][..], "--tls-ca"),
        (
            &["http://127.0.0.1:9/", "--pidfile", "/x.pid"][..],
            "need --reload",
        ),
        (
            &["http://127.0.0.1:9/", "--window", "0s"][..],
            "greater than zero",
        ),
    ] {
        let (code, stderr) = common::usage_error(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(what), "{args:?}: {stderr}");
    }
}

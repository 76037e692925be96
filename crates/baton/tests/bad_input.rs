//! Bad input gets an error that names the value and says what would be right, and the
//! right exit status: 2 for a bad command line, 1 for a server that cannot start.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(support::hello_exe())
        .args(args)
        .output()
        .expect("run the demo");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn malformed_listen_addresses() {
    for (addr, reason) in [
        ("127.0.0.1", "no port"),
        (
            "127.0.0.1:99999",
            "the port is not a number from 0 to 65535",
        ),
        ("example.com:80", "the host is not an IP address"),
        ("unix:", "the Unix socket path is empty"),
    ] {
        let (code, err) = run(&["--listen", addr]);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains(&format!("invalid listen address `{addr}`: {reason}")),
            "{err}"
        );
        assert!(err.contains("expected HOST:PORT"), "{err}");
    }
}

#[test]
fn an_address_in_use_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, err) = run(&["--listen", "127.0.0.1:0", "--listen", &addr]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen on {addr}: address already in use")),
        "{err}"
    );
}

#[test]
fn zero_and_absurd_deadlines() {
    let (code, err) = run(&["--listen", "127.0.0.1:0", "--drain-timeout", "0s"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("drain timeout must be between 1ms and 86400s, got 0ns"),
        "{err}"
    );
    let (code, err) = run(&["--listen", "127.0.0.1:0", "--drain-timeout", "400days"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("drain timeout must be between"), "{err}");
    let (code, err) = run(&[
        "--listen",
        "127.0.0.1:0",
        "--finalizer-timeout",
        "0s",
        "--finalizer",
        "db=1s",
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("hook time limit must be between"), "{err}");
    let (code, err) = run(&["--drain-timeout", "5"]);
    assert_eq!(code, Some(2), "a duration needs a unit");
    assert!(err.contains("'5'"), "{err}");
}

#[test]
fn unknown_signals_and_malformed_finalizers() {
    for sig in ["FOO", "KILL", "9"] {
        let (code, err) = run(&["--shutdown-signal", sig]);
        assert_eq!(code, Some(2));
        assert!(err.contains(&format!("unknown signal `{sig}`")), "{err}");
        assert!(err.contains("expected one of HUP, INT"), "{err}");
    }
    let (code, err) = run(&["--shutdown-signal", "TERM", "--shutdown-signal", "SIGTERM"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("signal SIGTERM is mapped twice"), "{err}");
    let (code, err) = run(&["--finalizer", "db"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("`db` is not NAME=DURATION"), "{err}");
}

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
fn every_bad_duration_gets_one_message_shape_and_exit_2() {
    for (flag, value, why) in [
        ("--drain-timeout", "0s", "is out of range"),
        ("--drain-timeout", "400days", "is out of range"),
        ("--drain-timeout", "abc", "is not a duration"),
        ("--drain-timeout", "5", "has no unit"),
        ("--idle-grace", "1x", "is not a duration"),
        ("--ready-timeout", "0ms", "is out of range"),
        ("--finalizer", "db=0s", "is out of range"),
        ("--finalizer-timeout", "0s", "is out of range"),
    ] {
        let (code, err) = run(&["--listen", "127.0.0.1:0", flag, value]);
        assert_eq!(code, Some(2), "{flag} {value}: {err}");
        assert!(
            err.contains(&format!("`{value}` {why}")) || err.contains(why),
            "{err}"
        );
        assert!(
            err.contains("expected a duration from") && err.contains("e.g. 500ms, 30s, 2m"),
            "{err}"
        );
    }
    let (code, err) = run(&["--drain-delay", "0s", "--drain-delay", "25h"]);
    assert_eq!(code, Some(2), "{err}");
}

#[test]
fn unknown_uncatchable_and_conflicting_signals() {
    let (code, err) = run(&["--shutdown-signal", "FOO"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("unknown signal `FOO`"), "{err}");
    assert!(err.contains("expected one of HUP, INT"), "{err}");
    for sig in ["KILL", "9", "SIGSTOP"] {
        let (code, err) = run(&["--shutdown-signal", sig]);
        assert_eq!(code, Some(2));
        assert!(
            err.contains(&format!("signal `{sig}` cannot be caught")),
            "{err}"
        );
    }
    // Adding a signal the preset already maps to another action is a conflict, named.
    let (code, err) = run(&["--listen", "127.0.0.1:0", "--shutdown-signal", "HUP"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("signal SIGHUP is mapped twice: to `restart` and to `shutdown`"),
        "{err}"
    );
    let (code, err) = run(&["--listen", "127.0.0.1:0", "--signals", "apache"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("unknown signal preset `apache`"), "{err}");
    let (code, err) = run(&["--finalizer", "db"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("`db` is not NAME=DURATION"), "{err}");
}

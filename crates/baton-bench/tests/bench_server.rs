//! `bench-server` describes itself, not the package's other binary.
#![allow(clippy::unwrap_used)]

use std::process::Command;

/// Regression (issue 27, a new user): `bench-server --help` showed baton-bench's
/// description ("The reload verifier: ...") and `-V` its name.
#[test]
fn bench_server_has_its_own_help_and_name() {
    let out = |arg: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_bench-server"))
            .arg(arg)
            .output()
            .unwrap();
        assert!(o.status.success(), "{arg}");
        String::from_utf8(o.stdout).unwrap()
    };
    for help in [out("--help"), out("-h")] {
        assert!(help.starts_with("The throughput baseline"), "{help}");
        assert!(!help.contains("reload verifier"), "{help}");
        assert!(help.contains("Usage: bench-server"), "{help}");
    }
    assert!(out("-V").starts_with("bench-server "));
}

/// An error whose message ends with its cause printed it twice (`listen on unix:/x:
/// No such file or directory (os error 2): No such file or directory (os error 2)`).
#[test]
fn an_error_says_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("unix:{}", dir.path().join("no-such-dir/x.sock").display());
    let out = Command::new(env!("CARGO_BIN_EXE_bench-server"))
        .args(["baton", "--listen", &addr])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&addr), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

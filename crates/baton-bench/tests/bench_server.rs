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

//! What a new user reads (issue 27): the binary's name and version, the usage line of a
//! command that needs a target, the valid values of `--signals`, and the demo's errors
//! (the admin token, each cause once).
#![allow(clippy::unwrap_used)]

#[path = "../../baton/tests/support/mod.rs"]
mod support;

use std::process::Command;

/// Runs `exe ARGS` to its end: (exit status, stdout, stderr).
fn run(
    exe: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, String, String) {
    let out = Command::new(exe)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("BATON_ADMIN_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn baton(args: &[&str]) -> (Option<i32>, String, String) {
    run(env!("CARGO_BIN_EXE_baton").as_ref(), args, &[])
}

#[test]
fn the_binary_is_named_baton() {
    let (code, out, _) = baton(&["-V"]);
    assert_eq!(code, Some(0));
    assert_eq!(out.trim(), format!("baton {}", env!("CARGO_PKG_VERSION")));
}

/// `baton reload` without a target said `Usage: baton reload --name <NAME>`, as if a
/// name were the only way: the pidfile is the other.
#[test]
fn a_command_without_its_target_names_every_way_to_give_it() {
    for command in ["reload", "stop", "restart", "status"] {
        let (code, _, err) = baton(&[command]);
        assert_eq!(code, Some(2), "{command}: {err}");
        assert!(
            err.contains(&format!(
                "Usage: baton {command} <--name <NAME>|--pidfile <PATH>>"
            )),
            "{command}: {err}"
        );
    }
    let (code, _, err) = baton(&["reload", "--name", "web", "--pidfile", "/x.pid"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
}

/// The master's `--signals` takes the presets (not `none`: the master always handles
/// its signals); the error lists exactly them.
#[test]
fn signals_lists_exactly_the_valid_presets() {
    let (code, _, err) = baton(&[
        "run",
        "--signals",
        "foo",
        "--listen",
        "127.0.0.1:0",
        "--",
        "true",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("expected one of baton, faygo, endless, ghelper, goframe, nginx\n"),
        "{err}"
    );
    let (code, _, err) = baton(&[
        "run",
        "--signals",
        "none",
        "--listen",
        "127.0.0.1:0",
        "--",
        "true",
    ]);
    assert_eq!(code, Some(2), "none is not a preset of the master: {err}");
}

/// The demo: `--signals` takes `none` too, and says so; an admin TCP listener without a
/// token names the options that give one (it named `Admin::new`, a library function);
/// a missing token file or pidfile directory says its cause once (it was printed twice:
/// the message already ends with it).
#[test]
fn the_demos_errors_name_its_options_and_each_cause_once() {
    let hello = support::hello_exe();
    let (code, _, err) = run(
        &hello,
        &["--signals", "foo", "--listen", "127.0.0.1:0"],
        &[],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("expected one of baton, faygo, endless, ghelper, goframe, nginx, none"),
        "{err}"
    );

    let (code, _, err) = run(
        &hello,
        &["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
        &[],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--admin-token-file") && err.contains("BATON_ADMIN_TOKEN"),
        "{err}"
    );
    assert!(!err.contains("Admin::new"), "{err}");
    assert!(
        !err.contains("listening on"),
        "refused before anything binds: {err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir");
    let token = missing.join("token");
    let pidfile = missing.join("hello.pid");
    for (args, what) in [
        (
            vec![
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--admin-token-file",
                token.to_str().unwrap(),
            ],
            "read the admin token from",
        ),
        (
            vec![
                "--listen",
                "127.0.0.1:0",
                "--pidfile",
                pidfile.to_str().unwrap(),
            ],
            "pidfile",
        ),
    ] {
        let (code, _, err) = run(&hello, &args, &[]);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains(what), "{err}");
        assert_eq!(
            err.matches("No such file or directory").count(),
            1,
            "the cause once: {err}"
        );
    }
}

//! The task runner refuses what it does not know — a typo in a task, a flag or an argument
//! prints the usage and exits 2 instead of running a task as if nothing was wrong.

use std::process::Command;

/// Runs the built xtask binary with `args`: (exit code, stderr).
fn xtask(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .expect("running xtask");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_flags_and_arguments_are_refused_with_the_usage() {
    for args in [
        &["cluster", "up", "--bogus-flag"][..],
        &["cluster", "up", "extra"],
        &["cluster", "restart"],
        &["build", "--release"],
        &["bench", "quik"],
        &["fuzz", "edge", "many"],
        &["validate"],
        &["validate", "envoy.yaml", "rate-limiter"],
        &["tset"],
    ] {
        let (code, stderr) = xtask(args);
        assert_eq!(code, Some(2), "{args:?} was not refused: {stderr}");
        // clap prints the usage, or for a bad value the argument and where to get help.
        assert!(
            stderr.contains("Usage:") || stderr.contains("--help"),
            "{args:?} printed no usage: {stderr}"
        );
    }
}

#[test]
fn help_is_a_success_and_names_every_task() {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("--help")
        .output()
        .expect("running xtask");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for task in [
        "setup", "build", "test", "envoy", "images", "schemas", "release", "validate", "cluster",
        "demo", "fuzz", "bench",
    ] {
        assert!(help.contains(task), "help lacks {task}: {help}");
    }
}

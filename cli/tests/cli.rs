//! The `strait` command line as a user meets it: help for every command, clear errors for
//! missing contexts and bad flags. (Being an integration test, this also makes
//! `cargo test --workspace` build the binary that the whole-mesh tests start.)

use std::process::Command;

fn strait(args: &[&str], config: &std::path::Path) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(args)
        .env("STRAIT_CONFIG", config)
        .env_remove("STRAIT_CONTEXT")
        .output()
        .expect("the strait binary runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn every_command_has_help() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    for command in [
        &["--help"][..],
        &["trust", "init", "--help"],
        &["trust", "issue", "--help"],
        &["gateway", "init", "--help"],
        &["gateway", "run", "--help"],
        &["apply", "--help"],
        &["get", "--help"],
        &["delete", "--help"],
        &["link", "--help"],
        &["unlink", "--help"],
        &["demo", "--help"],
    ] {
        let (ok, stdout, stderr) = strait(command, &config);
        assert!(ok, "{command:?}: {stderr}");
        assert!(stdout.contains("Usage: strait"), "{command:?}: {stdout}");
    }
}

#[test]
fn commands_without_a_context_say_how_to_get_one() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = strait(&["get", "services"], &dir.path().join("config"));
    assert!(!ok);
    assert!(
        stderr.contains("no context selected") && stderr.contains("gateway init"),
        "{stderr}"
    );
    let (ok, _, stderr) = strait(
        &["--context", "nowhere", "get", "links"],
        &dir.path().join("config"),
    );
    assert!(!ok);
    assert!(stderr.contains("no context named \"nowhere\""), "{stderr}");
}

#[test]
fn trust_init_refuses_to_overwrite_a_root_and_bad_names_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let trust = dir.path().join("trust");
    let trust = trust.to_str().unwrap();
    let (ok, stdout, _) = strait(
        &[
            "trust",
            "init",
            "--trust-domain",
            "example.mesh",
            "--dir",
            trust,
        ],
        &config,
    );
    assert!(ok && stdout.contains("sha256:"), "{stdout}");
    let (ok, _, stderr) = strait(
        &[
            "trust",
            "init",
            "--trust-domain",
            "example.mesh",
            "--dir",
            trust,
        ],
        &config,
    );
    assert!(!ok && stderr.contains("already exists"), "{stderr}");
    let (ok, _, stderr) = strait(
        &[
            "trust",
            "init",
            "--trust-domain",
            "Bad_Domain",
            "--dir",
            "x",
        ],
        &config,
    );
    assert!(!ok && stderr.contains("--trust-domain"), "{stderr}");
    let (ok, _, stderr) = strait(
        &[
            "gateway",
            "init",
            "--cluster",
            "West",
            "--trust",
            trust,
            "--dir",
            "x",
            "--quic-addr",
            "127.0.0.1:1",
            "--api-addr",
            "127.0.0.1:2",
            "--admin-addr",
            "127.0.0.1:3",
        ],
        &config,
    );
    assert!(
        !ok && stderr.contains("--cluster") && stderr.contains("lowercase"),
        "{stderr}"
    );
}

//! End to end: `natter-bench connect --transport quic` against the natterd it
//! spawns, for the fleet's per-socket bound (`--quic-connections-per-socket`):
//! asking for more connections than one socket may carry spreads them over
//! more sockets, and a bound outside 1..=4096 is refused before anything
//! starts.
//!
//! natter-bench's `--spawn` runs the natterd built beside it
//! (`target/debug/natterd`): build the workspace first (`scripts/test.sh` does;
//! alone: `cargo build -j2 -p natter-server`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The natter-bench binary under test.
fn bench() -> Command {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_natter-bench"));
    let natterd = exe.with_file_name("natterd");
    assert!(
        natterd.is_file(),
        "{} is missing: build it first (cargo build -j2 -p natter-server)",
        natterd.display()
    );
    Command::new(exe)
}

fn run(args: &[&str]) -> Output {
    let output = bench().args(args).output().expect("natter-bench runs");
    eprintln!(
        "natter-bench {}\n--- stdout\n{}\n--- stderr\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn more_connections_than_one_socket_carries_open_more_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("connect.json");
    let json_arg = json.display().to_string();
    let output = run(&[
        "connect",
        "--spawn",
        "--cores",
        "2",
        "--transport",
        "quic",
        "--connections",
        "10",
        "--quic-connections-per-socket",
        "4",
        "--duration",
        "1s",
        "--json",
        &json_arg,
    ]);
    assert!(output.status.success(), "exit {:?}", output.status.code());
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["transport"], "quic");
    assert_eq!(report["connections"], 10, "every connection held to the end");
    // 10 connections at 4 per socket: 4 + 4 + 2.
    assert_eq!(report["udp_sockets"], 3);
    assert_eq!(report["errors"], 0);
}

#[test]
fn a_per_socket_bound_outside_its_range_is_refused_with_exit_code_2() {
    for bad in ["0", "4097"] {
        let output = run(&[
            "connect",
            "--spawn",
            "--transport",
            "quic",
            "--connections",
            "10",
            "--quic-connections-per-socket",
            bad,
        ]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "--quic-connections-per-socket {bad}"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("--quic-connections-per-socket") && stderr.contains("1..=4096"),
            "{stderr}"
        );
        // Refused before natterd was started or an account signed up.
        assert!(!String::from_utf8_lossy(&output.stdout).contains("natterd started"));
    }
}

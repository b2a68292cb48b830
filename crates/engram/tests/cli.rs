//! The `engram` client commands against a real server.

mod common;

use std::process::{Command, Output};

use common::Server;

fn engram(server: &Server, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(args)
        .args(["--url", &server.base])
        .output()
        .expect("run engram")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn space_remember_recall_import_status() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));

    let o = engram(&s, &["space", "create", "notes", "--dimension", "64"]);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains("created space notes (64 dimensions)"));
    let o = engram(&s, &["space", "create", "notes"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("409"), "{o:?}");

    let o = engram(
        &s,
        &[
            "remember",
            "the user prefers dark mode",
            "--space",
            "notes",
            "--confidence",
            "0.9",
        ],
    );
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains("stored mem_"));
    let o = engram(
        &s,
        &["recall", "dark mode", "--space", "notes", "--limit", "3"],
    );
    assert!(o.status.success(), "{o:?}");
    let out = stdout(&o);
    assert!(out.contains("1 result(s) from space notes"), "{out}");
    assert!(out.contains("the user prefers dark mode"), "{out}");
    assert!(out.contains("hybrid retrieval"), "{out}");
    assert!(out.contains("dense+lexical"), "{out}");
    let o = engram(
        &s,
        &[
            "recall",
            "dark",
            "--space",
            "notes",
            "--retrieval",
            "lexical",
        ],
    );
    assert!(o.status.success(), "{o:?}");
    let out = stdout(&o);
    assert!(out.contains("lexical retrieval"), "{out}");
    assert!(out.contains("the user prefers dark mode"), "{out}");
    // The search breadth: taken in range, refused outside it with the range named.
    let o = engram(
        &s,
        &["recall", "dark mode", "--space", "notes", "--ef", "200"],
    );
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains("the user prefers dark mode"));
    let o = engram(
        &s,
        &["recall", "dark mode", "--space", "notes", "--ef", "5"],
    );
    assert!(!o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("10 to 4096"), "{err}");

    // Import: 5 good lines, one invalid JSON, one with a wrong embedding, one blank.
    let file = dir.path().join("memories.jsonl");
    let lines = [
        r#"{"content": "first"}"#,
        r#"{"content": "second", "confidence": 0.2}"#,
        "{not json",
        r#"{"content": "third"}"#,
        "",
        r#"{"content": "bad vector", "embedding": [1, 2, 3]}"#,
        r#"{"content": "fourth"}"#,
        r#"{"content": "fifth", "id": "five"}"#,
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    let o = engram(
        &s,
        &[
            "import",
            file.to_str().unwrap(),
            "--space",
            "notes",
            "--batch",
            "3",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "bad lines make the exit status 1: {o:?}"
    );
    let out = stdout(&o);
    assert!(out.contains("imported 5 memories"), "{out}");
    assert!(out.contains("2 bad line(s)"), "{out}");
    assert!(out.contains("line 3: invalid JSON"), "{out}");
    assert!(
        out.contains("line 6: ") && out.contains("3 dimensions"),
        "{out}"
    );

    let o = engram(&s, &["status"]);
    assert!(o.status.success(), "{o:?}");
    let out = stdout(&o);
    assert!(out.contains("healthy"), "{out}");
    assert!(out.contains("2 space(s), 6 memories"), "{out}");

    let o = engram(&s, &["space", "list"]);
    assert!(stdout(&o).contains("notes"), "{o:?}");
}

#[test]
fn every_command_explains_its_flags() {
    for cmd in [
        vec!["start", "--help"],
        vec!["space", "create", "--help"],
        vec!["remember", "--help"],
        vec!["recall", "--help"],
        vec!["import", "--help"],
        vec!["status", "--help"],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_engram"))
            .args(&cmd)
            .output()
            .unwrap();
        assert!(o.status.success(), "{cmd:?}");
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            text.contains("--url") || cmd[0] == "start",
            "{cmd:?}: {text}"
        );
        assert!(text.contains("Usage"), "{cmd:?}: {text}");
    }
}

#[test]
fn an_unreachable_server_is_a_clear_error() {
    let o = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["status", "--url", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot reach the server"),
        "{o:?}"
    );
}

/// Several batches in flight: a line linking to a memory of an earlier batch is stored after
/// that batch (never refused for a target still on the wire), and every line arrives.
#[test]
fn import_keeps_batches_in_flight_and_links_reach_earlier_batches() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    let file = dir.path().join("linked.jsonl");
    let mut lines: Vec<String> = (0..40)
        .map(|i| format!(r#"{{"id": "n{i}", "content": "note number {i}", "auto_link": false}}"#))
        .collect();
    // In the last batch (of 4): links to the first and a middle batch.
    lines.push(
        r#"{"id": "hub", "content": "the hub", "links": [{"to": "n0", "weight": 0.5}, {"to": "n21", "weight": 0.7}]}"#
            .into(),
    );
    std::fs::write(&file, lines.join("\n")).unwrap();
    let o = engram(
        &s,
        &[
            "import",
            file.to_str().unwrap(),
            "--space",
            "many",
            "--batch",
            "4",
        ],
    );
    assert!(o.status.success(), "{o:?}");
    assert!(
        stdout(&o).contains("imported 41 memories"),
        "{}",
        stdout(&o)
    );
    let got: serde_json::Value =
        reqwest::blocking::get(format!("{}/api/v1/memories/hub?space=many", s.base))
            .unwrap()
            .json()
            .unwrap();
    let mut to: Vec<&str> = got["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["to"].as_str().unwrap())
        .collect();
    to.sort();
    assert_eq!(to, ["n0", "n21"], "{got}");
}

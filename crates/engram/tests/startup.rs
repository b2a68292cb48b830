//! What a new user sees at start-up: logs a file or a log shipper can read (no colour codes
//! off a terminal; `--log-format json` is one JSON object per line), and the text embedder new
//! spaces get, said in the log: the neural model when its weights are where
//! `scripts/fetch-model` puts them, without a flag; else the hashing embedder, with the one
//! command that fetches the better one.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::Server;

/// Starts a server with logs at `info` into a file; the server and the log file.
fn start_logged(
    data: &std::path::Path,
    log: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Server {
    let file = std::fs::File::create(log).unwrap();
    let mut env = env.to_vec();
    env.push(("RUST_LOG", "info"));
    Server::try_start_with(data, extra, &env, Stdio::from(file)).unwrap()
}

fn dimension_of_default(s: &Server) -> u64 {
    let c = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let v: serde_json::Value = c
        .get(s.url("/api/v1/spaces"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    v["spaces"][0]["dimension"].as_u64().unwrap()
}

#[test]
fn logs_to_a_file_carry_no_colour_codes_and_json_logs_are_one_object_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("text.log");
    let s = start_logged(&dir.path().join("a"), &log, &["--embedder", "hashing"], &[]);
    assert_eq!(s.stop().code(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("INFO"), "{text}");
    assert!(!text.contains('\x1b'), "ANSI codes in a log file: {text:?}");

    let log = dir.path().join("json.log");
    let s = start_logged(
        &dir.path().join("b"),
        &log,
        &["--embedder", "hashing", "--log-format", "json"],
        &[],
    );
    assert_eq!(s.stop().code(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "{text}");
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object a line ({e}): {line:?}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    assert!(text.contains("hashing embedder"), "{text}");
}

#[test]
fn without_model_weights_the_log_names_the_command_that_fetches_them() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("no-model");
    std::fs::create_dir(&empty).unwrap();
    let log = dir.path().join("log");
    let s = start_logged(
        &dir.path().join("data"),
        &log,
        &["--embedder", "auto"],
        &[("ENGRAM_MODEL_DIR", empty.to_str().unwrap())],
    );
    assert_eq!(dimension_of_default(&s), 768);
    assert_eq!(s.stop().code(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("hashing embedder"), "{text}");
    assert!(text.contains("scripts/fetch-model"), "{text}");
    // `--embedder model` without weights is a clear start-up error.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["start", "--port", "0", "--embedder", "model", "--data-dir"])
        .arg(dir.path().join("data2"))
        .env("ENGRAM_MODEL_DIR", &empty)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("scripts/fetch-model"), "{err}");
}

#[test]
fn the_fetched_model_is_used_without_a_flag_and_hashing_keeps_the_old_behaviour() {
    let model = engram_embed::workspace_test_model().unwrap();
    let model = model.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    // No flag: the weights where scripts/fetch-model put them are used for new spaces.
    let s = start_logged(
        &dir.path().join("data"),
        &log,
        &["--embedder", "auto"],
        &[("ENGRAM_MODEL_DIR", model)],
    );
    assert_eq!(dimension_of_default(&s), 384);
    assert_eq!(s.stop().code(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("new spaces embed text with") && text.contains("384 dimensions"),
        "{text}"
    );
    // --embedder hashing: the old behaviour, whatever is cached.
    let s = start_logged(
        &dir.path().join("data2"),
        &log,
        &["--embedder", "hashing"],
        &[("ENGRAM_MODEL_DIR", model)],
    );
    assert_eq!(dimension_of_default(&s), 768);
    assert_eq!(s.stop().code(), Some(0));
}

//! The README's quickstart, run as written: every `curl` line of its first shell block under
//! "## Quickstart", against a real server (the address swapped for the test's port), must
//! answer 2xx with JSON. A change of the API that breaks the quickstart fails here.

mod common;

use std::process::Command;

use common::Server;

/// The quickstart's commands: the first ```sh block after "## Quickstart", continuation lines
/// joined.
fn quickstart_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let section = readme
        .split("## Quickstart")
        .nth(1)
        .expect("the README has a Quickstart section");
    let block = section
        .split("```sh")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block in the Quickstart section");
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(line);
            commands.push(std::mem::take(&mut current));
        }
    }
    commands
}

#[test]
fn the_readme_quickstart_works_as_written() {
    let commands = quickstart_commands();
    assert!(
        commands.len() >= 5 && commands.iter().all(|c| c.starts_with("curl ")),
        "the quickstart block should be curl lines: {commands:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    // As the README starts it: the embedder of this machine's default (a model when one is
    // cached, else hashing); the quickstart works with either.
    let s = Server::try_start(dir.path(), &["--embedder", "auto"]).unwrap();
    let addr = s.base.trim_start_matches("http://").to_string();
    for command in &commands {
        assert!(
            command.contains("localhost:7432"),
            "a quickstart line that does not talk to the server: {command}"
        );
        let line = command.replace("localhost:7432", &addr).replacen(
            "curl ",
            "curl --max-time 60 -w '\\n%{http_code}' ",
            1,
        );
        let out = Command::new("bash").arg("-c").arg(&line).output().unwrap();
        assert!(out.status.success(), "{line}: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, status) = text.rsplit_once('\n').expect("a status line");
        let status: u16 = status.trim().parse().unwrap();
        assert!(
            (200..300).contains(&status),
            "{command}\nanswered {status}: {body}"
        );
        let v: serde_json::Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("{command}\nnot JSON ({e}): {body}"));
        assert!(v.is_object(), "{command}: {body}");
    }
    // What the lines did is there: the two memories and the space they made.
    let out = Command::new("curl")
        .args(["-s", &format!("http://{addr}/api/v1/spaces")])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let spaces = v["spaces"].as_array().unwrap();
    for s in spaces {
        assert_eq!(s["memories"], 1, "{s}");
    }
    assert_eq!(spaces.len(), 2, "{v}");
}

//! `engram cluster status`: the nodes of the cluster a server belongs to, as a table.

use anyhow::Result;
use serde_json::Value;

use crate::client::Api;

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Prints `GET /api/v1/cluster/nodes` as a table, then the spaces without a quorum of live
/// replicas, if any.
pub fn status(api: &Api) -> Result<()> {
    let v = api.get("/api/v1/cluster/nodes")?;
    println!(
        "cluster seen from {}: epoch {}, {} space(s), {} replica(s) each, metadata leader {}",
        text(&v["node"]),
        text(&v["epoch"]),
        text(&v["spaces"]),
        text(&v["replicas"]),
        text(&v["metadata_leader"]),
    );
    let header = [
        "node",
        "state",
        "rack",
        "led",
        "held",
        "address",
        "cluster address",
    ];
    let mut rows: Vec<[String; 7]> = Vec::new();
    for n in v["nodes"].as_array().into_iter().flatten() {
        let led = if n["reachable"].as_bool() == Some(false) {
            "unreachable".into()
        } else {
            text(&n["spaces_led"])
        };
        rows.push([
            text(&n["id"]),
            text(&n["state"]),
            text(&n["rack"]),
            led,
            text(&n["spaces_held"]),
            text(&n["address"]),
            text(&n["cluster_address"]),
        ]);
    }
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(&header.map(String::from));
    for r in &rows {
        line(r);
    }
    let short: Vec<String> = v["spaces_without_quorum"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    if !short.is_empty() {
        println!(
            "{} space(s) without a quorum of live replicas: {}",
            short.len(),
            short.join(", ")
        );
    }
    Ok(())
}

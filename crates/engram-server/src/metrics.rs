//! `GET /metrics` in the Prometheus text format: request counts and latency per route and
//! status, WAL fsync latency and batch size (recorded by the storage engine through the
//! `metrics` facade), memories and bytes per loaded space, compaction work, recall latency.

use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::AppState;

/// Latency buckets, in seconds.
const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Records per group commit.
const RECORDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// The process's Prometheus recorder, installed on first use (one per process: the `metrics`
/// facade has one global recorder). `None` when another recorder was installed first.
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("engram_wal_batch_records".into()),
                    RECORDS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("engram_raft_propose_commands".into()),
                        RECORDS,
                    )
                })
                .and_then(|b| b.set_buckets(SECONDS));
            match builder.and_then(|b| b.install_recorder()) {
                Ok(h) => {
                    // Histogram samples wait in the recorder until upkeep folds them into
                    // their buckets: without a scraper they would pile up (several per write).
                    let upkeep = h.clone();
                    let spawned = std::thread::Builder::new()
                        .name("metrics-upkeep".into())
                        .spawn(move || loop {
                            std::thread::sleep(std::time::Duration::from_secs(5));
                            upkeep.run_upkeep();
                        });
                    if let Err(e) = spawned {
                        tracing::error!(error = %e, "the metrics upkeep thread did not start");
                    }
                    Some(h)
                }
                Err(e) => {
                    tracing::error!(error = %e, "metrics recorder not installed; /metrics will be empty");
                    None
                }
            }
        })
        .as_ref()
}

/// Middleware: counts every request and times it, by route pattern, method and status.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().as_str().to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    let labels = [("route", route), ("method", method), ("status", status)];
    metrics::counter!("engram_http_requests_total", &labels).increment(1);
    metrics::histogram!("engram_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// `GET /metrics`.
pub async fn render(State(st): State<AppState>, q: crate::routes::Params) -> Response {
    if let Err(e) = crate::routes::params(q, &[]) {
        return e.into_response();
    }
    let engine = &st.engine;
    let stats = engine.stats();
    let counters = [
        ("engram_compaction_flushes_total", &stats.flushes),
        ("engram_compaction_merges_total", &stats.merges),
        ("engram_index_builds_total", &stats.index_builds),
        ("engram_index_loads_total", &stats.index_loads),
        ("engram_wal_records_total", &stats.records),
        ("engram_wal_group_commits_total", &stats.group_commits),
        ("engram_wal_bytes_written_total", &stats.wal_bytes_written),
        ("engram_compaction_bytes_total", &stats.compaction_bytes),
    ];
    for (name, v) in counters {
        metrics::counter!(name).absolute(v.load(Ordering::Relaxed));
    }
    metrics::gauge!("engram_index_pending_segments").set(engine.pending_index_builds() as f64);
    if let Some(c) = &st.cluster {
        let state = c.state();
        metrics::gauge!("engram_cluster_epoch").set(state.epoch as f64);
        metrics::gauge!("engram_cluster_spaces").set(state.spaces.len() as f64);
        metrics::gauge!("engram_cluster_spaces_without_quorum")
            .set(crate::cluster::under_replicated(c).len() as f64);
        for s in ["joining", "live", "down", "leaving", "removed"] {
            let n = state
                .nodes
                .values()
                .filter(|n| n.state.as_str() == s)
                .count();
            metrics::gauge!("engram_cluster_nodes", "state" => s).set(n as f64);
        }
    }
    // Per space, for the spaces open now (counting loads nothing).
    for id in engine.loaded_space_ids() {
        if let Ok(s) = engine.space_status(&id) {
            let labels = [("space", id.to_string())];
            metrics::gauge!("engram_space_memories", &labels).set(s.memories as f64);
            metrics::gauge!("engram_space_segment_bytes", &labels).set(s.segment_bytes as f64);
            metrics::gauge!("engram_space_memtable_bytes", &labels).set(s.memtable_bytes as f64);
            metrics::gauge!("engram_space_pending_links", &labels).set(s.pending_links as f64);
        }
    }
    let body = handle().map_or_else(String::new, |h| h.render());
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

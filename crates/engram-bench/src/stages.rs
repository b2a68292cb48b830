//! Where a write's time goes, from the servers' own `/metrics`: the mean of each stage's
//! histogram over a run (the change of its `_sum` over the change of its `_count`, between a
//! scrape before the run and one after).

use std::collections::HashMap;

/// A node's metrics text.
pub fn scrape(client: &reqwest::blocking::Client, base: &str) -> String {
    client
        .get(format!("{base}/metrics"))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default()
}

/// `series → value` of every sample line (the series with its labels).
fn samples(text: &str) -> HashMap<&str, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k, v.parse().ok()?))
        })
        .collect()
}

/// The sum and count of `metric`'s series whose labels contain `labels` (every one of them).
fn totals(text: &str, metric: &str, labels: &[&str]) -> (f64, f64) {
    let s = samples(text);
    let pick = |suffix: &str| -> f64 {
        let name = format!("{metric}{suffix}");
        s.iter()
            .filter(|(k, _)| {
                let (n, rest) = k.split_once('{').unwrap_or((k, ""));
                n == name && labels.iter().all(|l| rest.contains(l))
            })
            .map(|(_, v)| v)
            .sum()
    };
    (pick("_sum"), pick("_count"))
}

/// The mean of `metric` between the scrapes `before` and `after`, and how many were recorded.
pub fn mean(before: &str, after: &str, metric: &str, labels: &[&str]) -> (f64, f64) {
    let (s0, c0) = totals(before, metric, labels);
    let (s1, c1) = totals(after, metric, labels);
    let n = c1 - c0;
    if n <= 0.0 {
        return (f64::NAN, 0.0);
    }
    ((s1 - s0) / n, n)
}

/// The upper bound of the histogram bucket holding `metric`'s `q` quantile between the
/// scrapes (the buckets' bounds are the server's: `engram-server/src/metrics.rs`).
pub fn quantile_bound(before: &str, after: &str, metric: &str, labels: &[&str], q: f64) -> f64 {
    let name = format!("{metric}_bucket");
    let buckets = |text: &str| -> Vec<(f64, f64)> {
        let mut by_le: HashMap<String, f64> = HashMap::new();
        for (k, v) in samples(text) {
            let Some((n, rest)) = k.split_once('{') else {
                continue;
            };
            if n != name || !labels.iter().all(|l| rest.contains(l)) {
                continue;
            }
            if let Some(le) = rest.split("le=\"").nth(1).and_then(|r| r.split('"').next()) {
                *by_le.entry(le.to_string()).or_default() += v;
            }
        }
        let mut out: Vec<(f64, f64)> = by_le
            .into_iter()
            .map(|(le, v)| (le.parse().unwrap_or(f64::INFINITY), v))
            .collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    };
    let (b0, b1) = (buckets(before), buckets(after));
    let cum: Vec<(f64, f64)> = b1
        .iter()
        .map(|(le, v)| {
            let old = b0.iter().find(|(l, _)| l == le).map_or(0.0, |(_, v)| *v);
            (*le, v - old)
        })
        .collect();
    let total = cum.last().map_or(0.0, |(_, v)| *v);
    cum.iter()
        .find(|(_, v)| *v >= q * total && total > 0.0)
        .map_or(f64::NAN, |(le, _)| *le)
}

/// The stages of a remember, each as `name mean (count)`, in milliseconds.
pub fn describe(before: &str, after: &str) -> String {
    const STAGES: &[(&str, &str, &[&str])] = &[
        (
            "http",
            "engram_http_request_duration_seconds",
            &["route=\"/api/v1/memories/remember\""],
        ),
        ("write", "engram_raft_write_seconds", &[]),
        ("propose", "engram_raft_propose_seconds", &[]),
        ("log append", "engram_raft_log_append_seconds", &[]),
        ("append rpc", "engram_raft_append_rpc_seconds", &[]),
        (
            "follower append",
            "engram_raft_follower_append_seconds",
            &[],
        ),
        ("apply", "engram_raft_apply_seconds", &[]),
        ("fsync", "engram_wal_fsync_seconds", &[]),
    ];
    let mut parts = Vec::new();
    for (name, metric, labels) in STAGES {
        let (m, n) = mean(before, after, metric, labels);
        if n > 0.0 {
            let p99 = quantile_bound(before, after, metric, labels, 0.99);
            parts.push(format!(
                "{name} {:.3} ms, P99 <= {:.2} ms ({n:.0})",
                m * 1e3,
                p99 * 1e3
            ));
        }
    }
    let (c, n) = mean(before, after, "engram_raft_propose_commands", &[]);
    if n > 0.0 {
        parts.push(format!("{c:.1} writes per entry"));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn means_come_from_the_change_of_sum_over_count() {
        let before = "# TYPE x histogram\nx_sum 1.0\nx_count 2\ny_sum{route=\"/a\",status=\"200\"} 1\ny_count{route=\"/a\",status=\"200\"} 1\n";
        let after = "x_sum 1.5\nx_count 4\ny_sum{route=\"/a\",status=\"200\"} 4\ny_count{route=\"/a\",status=\"200\"} 2\ny_sum{route=\"/b\"} 9\ny_count{route=\"/b\"} 9\n";
        assert_eq!(super::mean(before, after, "x", &[]), (0.25, 2.0));
        assert_eq!(
            super::mean(before, after, "y", &["route=\"/a\""]),
            (3.0, 1.0)
        );
        assert!(super::mean(before, after, "z", &[]).0.is_nan());
        let before =
            "h_bucket{le=\"0.001\"} 10\nh_bucket{le=\"0.01\"} 10\nh_bucket{le=\"+Inf\"} 10\n";
        let after =
            "h_bucket{le=\"0.001\"} 108\nh_bucket{le=\"0.01\"} 109\nh_bucket{le=\"+Inf\"} 110\n";
        assert_eq!(super::quantile_bound(before, after, "h", &[], 0.98), 0.001);
        assert_eq!(super::quantile_bound(before, after, "h", &[], 0.99), 0.01);
        assert_eq!(
            super::quantile_bound(before, after, "h", &[], 1.0),
            f64::INFINITY
        );
    }
}

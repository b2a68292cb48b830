//! What deploys a cluster, checked where it cannot be run: the Kubernetes manifests parse and
//! say what matters (a headless Service, a StatefulSet whose pods name themselves and join
//! through the first, the secret mounted where the flag reads it, data on a claim, a
//! disruption budget that keeps a quorum), the Dockerfile is multi-stage with a volume and a
//! health check; and `scripts/local-cluster` starts a cluster of processes that Ctrl-C stops.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn kubernetes_manifests_parse_and_say_what_matters() {
    let text = std::fs::read_to_string(root().join("deploy/k8s/engram.yaml")).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("valid YAML");
    let of = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let svc = of("Service");
    assert_eq!(svc["spec"]["clusterIP"], "None", "headless");
    let ports: Vec<i64> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_i64().unwrap())
        .collect();
    assert_eq!(ports, [7432, 7433]);

    let sts = of("StatefulSet");
    let spec = &sts["spec"];
    assert_eq!(spec["serviceName"], svc["metadata"]["name"]);
    assert_eq!(spec["replicas"], 3);
    let pod = &spec["template"]["spec"];
    let c = &pod["containers"][0];
    let script = c["args"][0].as_str().unwrap();
    for needed in [
        "--node-id \"${POD_NAME}\"",
        "--cluster-addr",
        "--join ${SEED}",
        "--cluster-secret-file /etc/engram/secret",
        "--data-dir /data",
    ] {
        assert!(script.contains(needed), "{needed} missing from {script}");
    }
    let env: Vec<&str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(env.contains(&"POD_NAME") && env.contains(&"POD_NAMESPACE"));
    let mounts = c["volumeMounts"].as_array().unwrap();
    let mount =
        |name: &str| mounts.iter().find(|m| m["name"] == name).unwrap()["mountPath"].clone();
    assert_eq!(mount("data"), "/data");
    assert_eq!(mount("secret"), "/etc/engram");
    assert_eq!(
        pod["volumes"][0]["secret"]["secretName"], "engram-cluster",
        "the secret comes from a Secret"
    );
    assert_eq!(spec["volumeClaimTemplates"][0]["metadata"]["name"], "data");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/health");

    let pdb = of("PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 2, "a quorum of three stays up");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        spec["selector"]["matchLabels"]
    );
}

#[test]
fn the_dockerfile_is_multi_stage_with_a_volume_and_a_health_check() {
    let d = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let froms: Vec<&str> = d.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "{froms:?}");
    assert!(froms[1].contains("debian:bookworm-slim"));
    assert!(d.contains("cargo build --release"));
    assert!(d.contains("VOLUME [\"/data\"]"));
    assert!(d.lines().any(|l| l.starts_with("HEALTHCHECK")) && d.contains("/health"));
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn the_local_cluster_script_starts_nodes_and_ctrl_c_stops_them() {
    let dir = tempfile::tempdir().unwrap();
    // Two nodes on ports nobody uses: the script takes P..P+1 and P+100..P+101.
    let base = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        p.min(60_000)
    };
    let mut child = Command::new(root().join("scripts/local-cluster"))
        .args([
            "2",
            "--replicas",
            "2",
            "--base-port",
            &base.to_string(),
            "--dir",
        ])
        .arg(dir.path())
        .env("ENGRAM_BIN", env!("CARGO_BIN_EXE_engram"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut urls = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while urls.len() < 2 {
        assert!(Instant::now() < deadline);
        let line = lines.next().expect("the script's output").unwrap();
        if let Some(url) = line
            .split_whitespace()
            .nth(1)
            .filter(|u| u.starts_with("http"))
        {
            urls.push(url.to_string());
        }
    }
    let status = reqwest::blocking::get(format!("{}/api/v1/cluster/nodes", urls[1]))
        .unwrap()
        .json::<Value>()
        .unwrap();
    assert_eq!(status["nodes"].as_array().unwrap().len(), 2, "{status}");
    // Ctrl-C (SIGINT to the script): every node stops.
    unsafe { kill(child.id() as i32, 2) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the script did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    for u in &urls {
        assert!(
            reqwest::blocking::get(format!("{u}/health")).is_err(),
            "{u} still answers"
        );
    }
}

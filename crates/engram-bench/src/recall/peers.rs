//! hnswlib and faiss-cpu on the same vectors, in the same run: the set is written to a
//! directory (`meta.json`, `base.f32`, `queries.f32`, `truth.u32`, see `peers/peers.py`) and
//! `peers/peers.py` is run in a virtual environment that the bench makes itself
//! (`target/peers-venv`, from `peers/requirements.txt`, pinned versions). `ENGRAM_BENCH_PEERS=0`
//! leaves the peers out; when Python or the packages cannot be had, the bench says so and goes
//! on without them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::hard::HardSet;

const PEERS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/peers");

/// Whether the peers are measured (`ENGRAM_BENCH_PEERS`, default on).
pub(super) fn wanted() -> bool {
    std::env::var("ENGRAM_BENCH_PEERS").map_or(true, |v| v != "0")
}

/// The virtual environment's Python, made (once) if missing.
fn python() -> Result<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/peers-venv");
    let py = venv.join("bin/python");
    let ready = venv.join(".engram-peers-ready");
    let requirements = Path::new(PEERS_DIR).join("requirements.txt");
    let wanted = std::fs::read(&requirements).context("reading peers/requirements.txt")?;
    if ready.exists() && std::fs::read(&ready).ok().as_deref() == Some(&wanted[..]) {
        return Ok(py);
    }
    println!(
        "# peers: making the Python environment {} (once)",
        venv.display()
    );
    let status = Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .status()
        .context("running python3 -m venv")?;
    if !status.success() {
        bail!("python3 -m venv failed");
    }
    let status = Command::new(&py)
        .args(["-m", "pip", "install", "--quiet", "-r"])
        .arg(&requirements)
        .status()
        .context("running pip install")?;
    if !status.success() {
        bail!("pip install -r peers/requirements.txt failed");
    }
    std::fs::write(&ready, &wanted)?;
    Ok(py)
}

fn write_f32(path: &Path, rows: &[Vec<f32>]) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for r in rows {
        for x in r {
            f.write_all(&x.to_le_bytes())?;
        }
    }
    f.flush()?;
    Ok(())
}

/// One line of the peers' report.
pub(super) enum Line {
    Build {
        system: String,
        params: String,
        build_s: f64,
    },
    Point {
        system: String,
        ef: usize,
        recall: f64,
        p50_us: f64,
        p99_us: f64,
    },
}

/// Runs the peers on `set` at the beam widths `efs`.
pub(super) fn run(root: &Path, set: &HardSet, efs: &[usize]) -> Result<Vec<Line>> {
    let py = python()?;
    let dir = tempfile::tempdir_in(root)?;
    let dim = set.vectors[0].len();
    let k = set.truth[0].len();
    std::fs::write(
        dir.path().join("meta.json"),
        serde_json::json!({"n": set.vectors.len(), "dim": dim, "queries": set.queries.len(), "k": k})
            .to_string(),
    )?;
    write_f32(&dir.path().join("base.f32"), &set.vectors)?;
    write_f32(&dir.path().join("queries.f32"), &set.queries)?;
    let truth: Vec<u8> = set
        .truth
        .iter()
        .flatten()
        .flat_map(|r| r.to_le_bytes())
        .collect();
    std::fs::write(dir.path().join("truth.u32"), truth)?;
    let efs: Vec<String> = efs.iter().map(|e| e.to_string()).collect();
    let out = Command::new(&py)
        .arg(Path::new(PEERS_DIR).join("peers.py"))
        .arg(dir.path())
        .arg("--efs")
        .arg(efs.join(","))
        .output()
        .context("running peers.py")?;
    if !out.status.success() {
        bail!("peers.py failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut lines = Vec::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let v: Value =
            serde_json::from_str(l).with_context(|| format!("peers.py printed {l:?}"))?;
        let system = v["system"].as_str().unwrap_or("?").to_string();
        let f = |k: &str| v[k].as_f64().with_context(|| format!("{k} in {l}"));
        if v.get("build_s").is_some() {
            lines.push(Line::Build {
                system,
                params: v["params"].as_str().unwrap_or("?").to_string(),
                build_s: f("build_s")?,
            });
        } else {
            lines.push(Line::Point {
                system,
                ef: f("ef")? as usize,
                recall: f("recall")?,
                p50_us: f("p50_us")?,
                p99_us: f("p99_us")?,
            });
        }
    }
    Ok(lines)
}

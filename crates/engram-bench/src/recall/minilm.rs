//! Recall on real sentence embeddings (part `minilm`): the long descriptions of the text
//! suite's corpus (Debian's English package descriptions) embedded by all-MiniLM-L6-v2
//! (384-d), 10,000 of them (2,000 with `--quick`); queries are
//! the synopses of 1,000 of those packages (natural-language cues, not perturbed stored
//! points); truth by an exact scan. Measured like the hard data: 1 and 8 segments, the
//! recall-latency curve, and the peers on the same vectors. The embeddings are cached in
//! `target/bench-cache/` (keyed by the corpus's digest and the count), since embedding 10,000
//! descriptions takes minutes on two cores.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use engram_core::embed::Embedder;
use engram_embed::NeuralEmbedder;
use rand::seq::SliceRandom;

use super::hard::{self, HardSet};
use super::Config;
use crate::util;

const K: usize = 10;

fn cache_file(sha: &str, what: &str, n: usize) -> PathBuf {
    let short: String = sha
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .take(16)
        .collect();
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/bench-cache")
        .join(format!("minilm-{short}-{what}-{n}.f32"))
}

fn read_cache(path: &Path, dim: usize, n: usize) -> Option<Vec<Vec<f32>>> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() != n * dim * 4 {
        return None;
    }
    let flat: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Some(flat.chunks(dim).map(<[f32]>::to_vec).collect())
}

fn write_cache(path: &Path, rows: &[Vec<f32>]) -> Result<()> {
    std::fs::create_dir_all(path.parent().context("cache dir")?)?;
    let bytes: Vec<u8> = rows
        .iter()
        .flatten()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// `texts` embedded, from the cache when it holds them.
fn embedded(model: &NeuralEmbedder, texts: &[&str], cache: &Path) -> Result<Vec<Vec<f32>>> {
    let dim = model.dimension();
    if let Some(v) = read_cache(cache, dim, texts.len()) {
        return Ok(v);
    }
    let (v, took) = util::timed(|| model.embed_many(texts));
    let v = v?;
    println!(
        "#   embedded {} texts in {:.1} s (cached in {})",
        texts.len(),
        took.as_secs_f64(),
        cache.display()
    );
    write_cache(cache, &v)?;
    Ok(v)
}

pub(super) fn minilm(cfg: &Config, root: &Path) -> Result<()> {
    let want = if cfg.quick { 2_000 } else { 10_000 };
    let queries = if cfg.quick { 300 } else { 1_000 };
    let corpus = crate::text::fetch_corpus()?;
    let text = std::fs::read_to_string(&corpus)
        .with_context(|| format!("reading {}", corpus.display()))?;
    let sha = std::fs::read_to_string(corpus.with_extension("sha256")).unwrap_or_default();
    let mut docs = crate::text::usable(crate::text::parse(&text));
    docs.shuffle(&mut util::rng(2027));
    docs.truncate(want);
    let n = docs.len();
    ensure!(n > queries, "the corpus has only {n} usable packages");
    let model_dir = engram_embed::workspace_test_model().map_err(anyhow::Error::msg)?;
    let model = NeuralEmbedder::load(&model_dir)?;
    println!(
        "# MiniLM data: {n} Debian package descriptions embedded by {} ({}-d); {queries} queries: the synopses of {queries} of them; truth by an exact scan",
        model.name(),
        model.dimension()
    );
    let longs: Vec<&str> = docs.iter().map(|d| d.long.as_str()).collect();
    let vectors = embedded(&model, &longs, &cache_file(&sha, "long", n))?;
    let synopses: Vec<&str> = docs[..queries]
        .iter()
        .map(|d| d.synopsis.as_str())
        .collect();
    let cues = embedded(&model, &synopses, &cache_file(&sha, "synopsis", queries))?;
    let flat: Vec<f32> = vectors.iter().flatten().copied().collect();
    let truth = cues.iter().map(|q| util::exact_top(&flat, q, K)).collect();
    let set = HardSet {
        vectors,
        queries: cues,
        truth,
    };
    let layouts = hard::list_from_env("ENGRAM_BENCH_LAYOUTS", &hard::LAYOUTS)?;
    hard::measure_set(root, &set, "minilm", hard::params_from_env()?, &layouts)
}

//! The text suite: does a natural-language cue bring back the right memory? On real text
//! with known answers, in one run: BM25 alone, dense retrieval with the hashing embedder and
//! with all-MiniLM-L6-v2, and both fused (hybrid).
//!
//! The task: Debian 12's English package descriptions (`scripts/fetch-corpus`, from the
//! Debian archive; written by the packages' maintainers, not by us). Each package's long
//! description is stored as a memory; its one-line synopsis is the cue, and the right answer
//! is that package's memory. Packages whose synopsis or long description is not unique (the
//! `-data`, `-doc` families that share one text) are left out, as are very short
//! descriptions. A fixed seed picks the memories and the cues.
//!
//! Figures: `hit_at_1_<method>` and `hit_at_5_<method>` (share of cues whose answer is first,
//! or among the first five), `embed_sentences_per_s` (MiniLM on the CPU, batches of 32
//! synopses), `hybrid_recall_p99_ms` (embedding the cue and the hybrid recall, one cue at a
//! time).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use engram_core::embed::Embedder;
use engram_core::{Cue, MemoryId, RecallMode, Retrieval, SpaceId};
use engram_embed::NeuralEmbedder;
use engram_engine::{Engine, EngineOptions, Fusion, NewMemory, TextModel};
use rand::seq::SliceRandom;

use crate::util::{self, compare, percentile, report, Better};

struct Config {
    memories: usize,
    cues: usize,
}

/// One package: its name, synopsis and long description.
pub(crate) struct Doc {
    pub name: String,
    pub synopsis: String,
    pub long: String,
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(name)
}

pub(crate) fn fetch_corpus() -> Result<PathBuf> {
    let out = Command::new("bash")
        .arg(script("fetch-corpus"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running scripts/fetch-corpus")?;
    if !out.status.success() {
        bail!("scripts/fetch-corpus failed ({})", out.status);
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Parses a Translation file: `Package:`, `Description-en:` (the synopsis) and its
/// continuation lines (` .` separates paragraphs).
pub(crate) fn parse(text: &str) -> Vec<Doc> {
    let mut docs = Vec::new();
    for stanza in text.split("\n\n") {
        let mut name = None;
        let mut synopsis = None;
        let mut long = String::new();
        let mut in_desc = false;
        for line in stanza.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim().to_string());
                in_desc = false;
            } else if let Some(v) = line.strip_prefix("Description-en: ") {
                synopsis = Some(v.trim().to_string());
                in_desc = true;
            } else if in_desc && line.starts_with(' ') {
                let l = line.trim();
                if l == "." {
                    long.push('\n');
                } else {
                    if !long.is_empty() && !long.ends_with('\n') {
                        long.push(' ');
                    }
                    long.push_str(l);
                }
            } else {
                in_desc = false;
            }
        }
        if let (Some(name), Some(synopsis)) = (name, synopsis) {
            docs.push(Doc {
                name,
                synopsis,
                long: long.trim().to_string(),
            });
        }
    }
    docs
}

/// Packages whose synopsis and long description are both unique, the description at least
/// 15 words and the synopsis at least 3.
pub(crate) fn usable(docs: Vec<Doc>) -> Vec<Doc> {
    let mut syn = std::collections::HashMap::<String, usize>::new();
    let mut long = std::collections::HashMap::<String, usize>::new();
    for d in &docs {
        *syn.entry(d.synopsis.to_lowercase()).or_default() += 1;
        *long.entry(d.long.clone()).or_default() += 1;
    }
    docs.into_iter()
        .filter(|d| {
            syn[&d.synopsis.to_lowercase()] == 1
                && long[&d.long] == 1
                && d.long.split_whitespace().count() >= 15
                && d.synopsis.split_whitespace().count() >= 3
                && MemoryId::new(d.name.as_str()).is_ok()
        })
        .collect()
}

/// Which engine a method runs on.
#[derive(Clone, Copy, PartialEq)]
enum On {
    /// MiniLM embeddings, the default fusion.
    Neural,
    /// MiniLM embeddings, reciprocal-rank fusion (for comparison).
    NeuralRrf,
    /// The hashing embedder (768-d), the default fusion.
    Hashing,
}

#[derive(Clone, Copy)]
struct Method {
    name: &'static str,
    on: On,
    retrieval: Retrieval,
}

const METHODS: [Method; 6] = [
    Method {
        name: "lexical",
        on: On::Neural,
        retrieval: Retrieval::Lexical,
    },
    Method {
        name: "dense_hashing",
        on: On::Hashing,
        retrieval: Retrieval::Dense,
    },
    Method {
        name: "dense_minilm",
        on: On::Neural,
        retrieval: Retrieval::Dense,
    },
    Method {
        name: "hybrid_hashing",
        on: On::Hashing,
        retrieval: Retrieval::Hybrid,
    },
    Method {
        name: "hybrid_minilm",
        on: On::Neural,
        retrieval: Retrieval::Hybrid,
    },
    Method {
        name: "hybrid_minilm_rrf",
        on: On::NeuralRrf,
        retrieval: Retrieval::Hybrid,
    },
];
/// `hybrid_minilm` in [`METHODS`].
const HYBRID: usize = 4;

pub fn run(quick: bool) -> Result<()> {
    let cfg = if quick {
        Config {
            memories: 1_000,
            cues: 200,
        }
    } else {
        Config {
            memories: 4_000,
            cues: 1_000,
        }
    };
    println!(
        "# engram-bench text suite, {} mode, on {}",
        if quick { "quick" } else { "full" },
        util::machine_description()
    );
    let corpus = fetch_corpus()?;
    let text = std::fs::read_to_string(&corpus)
        .with_context(|| format!("reading {}", corpus.display()))?;
    let sha = std::fs::read_to_string(corpus.with_extension("sha256")).unwrap_or_default();
    let all = parse(&text);
    let total = all.len();
    let mut docs = usable(all);
    println!(
        "# corpus: {} (Translation-en.xz sha256 {}): {total} packages, {} with unique synopsis and description",
        corpus.display(),
        sha.trim(),
        docs.len()
    );
    let mut rng = util::rng(2026);
    docs.shuffle(&mut rng);
    docs.truncate(cfg.memories);
    if docs.len() < cfg.memories {
        bail!("the corpus has only {} usable packages", docs.len());
    }
    let cues: Vec<usize> = (0..cfg.cues).collect();

    let model_dir = engram_embed::workspace_test_model().map_err(anyhow::Error::msg)?;
    let model = Arc::new(NeuralEmbedder::load(&model_dir)?);
    println!(
        "# model: {} ({}, {} dimensions, at most {} tokens a text)",
        model_dir.display(),
        model.name(),
        model.dimension(),
        model.max_tokens()
    );

    // Embedding speed: synopses in batches of 32, after one warm-up batch.
    let sentences: Vec<&str> = docs.iter().take(512).map(|d| d.synopsis.as_str()).collect();
    model.embed_many(&sentences[..32])?;
    let t = Instant::now();
    for chunk in sentences.chunks(32) {
        model.embed_many(chunk)?;
    }
    let per_s = sentences.len() as f64 / t.elapsed().as_secs_f64();
    println!(
        "# embedding {} synopses (batches of 32, {} threads): {per_s:.0} sentences/s",
        sentences.len(),
        util::cpus()
    );
    report("embed_sentences_per_s", per_s, "1/s");

    // The memories: one engine with MiniLM, one with the hashing embedder (768-d).
    let root = tempfile::Builder::new()
        .prefix("engram-bench-text-")
        .tempdir_in(util::bench_root())?;
    let space = SpaceId::new("packages")?;
    let t = Instant::now();
    let longs: Vec<&str> = docs.iter().map(|d| d.long.as_str()).collect();
    let vectors = model.embed_many(&longs)?;
    let doc_secs = t.elapsed().as_secs_f64();
    println!(
        "# embedded {} descriptions in {doc_secs:.1} s ({:.0}/s)",
        longs.len(),
        longs.len() as f64 / doc_secs
    );
    let neural = Engine::open(
        &root.path().join("minilm"),
        EngineOptions {
            text_model: Some(TextModel(model.clone())),
            ..EngineOptions::default()
        },
    )?;
    let neural_rrf = Engine::open(
        &root.path().join("minilm-rrf"),
        EngineOptions {
            text_model: Some(TextModel(model.clone())),
            fusion: Fusion::ReciprocalRank,
            ..EngineOptions::default()
        },
    )?;
    let hashing = Engine::open(&root.path().join("hashing"), EngineOptions::default())?;
    println!(
        "# fusion: {:?} (hybrid_minilm, hybrid_hashing), {:?} (hybrid_minilm_rrf)",
        neural.options().fusion,
        neural_rrf.options().fusion
    );
    for e in [&neural, &neural_rrf, &hashing] {
        e.create_space(&space, None)?;
    }
    let new = |d: &Doc, v: Option<Vec<f32>>| NewMemory {
        id: Some(MemoryId::new(d.name.as_str()).expect("checked in usable")),
        content: d.long.clone(),
        embedding: v,
        auto_link: false,
        ..NewMemory::default()
    };
    for (chunk, vs) in docs.chunks(500).zip(vectors.chunks(500)) {
        for e in [&neural, &neural_rrf] {
            let batch = chunk.iter().zip(vs).map(|(d, v)| new(d, Some(v.clone())));
            e.remember_batch(&space, batch.collect())?;
        }
        hashing.remember_batch(&space, chunk.iter().map(|d| new(d, None)).collect())?;
    }
    // Flushed and indexed, as a store that has been running would be.
    for e in [&neural, &neural_rrf, &hashing] {
        e.compact()?;
        e.build_indexes()?;
    }

    // Every cue through every method; the cue's MiniLM embedding computed once.
    let cue_texts: Vec<&str> = cues.iter().map(|&i| docs[i].synopsis.as_str()).collect();
    let cue_vectors = model.embed_many(&cue_texts)?;
    let mut hits1 = [0usize; METHODS.len()];
    let mut hits5 = [0usize; METHODS.len()];
    for (k, &i) in cues.iter().enumerate() {
        let answer = docs[i].name.as_str();
        for (m, method) in METHODS.iter().enumerate() {
            let cue = Cue {
                max_results: 5,
                mode: RecallMode::Similarity,
                retrieval: Some(method.retrieval),
                ..Cue::text(cue_texts[k])
            };
            let r = match method.on {
                On::Neural => neural.recall_embedded(&space, &cue, Some(cue_vectors[k].clone()))?,
                On::NeuralRrf => {
                    neural_rrf.recall_embedded(&space, &cue, Some(cue_vectors[k].clone()))?
                }
                On::Hashing => hashing.recall(&space, &cue)?,
            };
            let ids: Vec<&str> = r.vivid.iter().map(|x| x.id.as_str()).collect();
            if ids.first() == Some(&answer) {
                hits1[m] += 1;
            }
            if ids.contains(&answer) {
                hits5[m] += 1;
            }
        }
    }
    let n = cues.len() as f64;
    println!(
        "# {} memories, {} cues (synopsis -> its package's description), top 5, mode similarity:",
        docs.len(),
        cues.len()
    );
    for (m, method) in METHODS.iter().enumerate() {
        println!(
            "#   {:<15} hit@1 {:.3}  hit@5 {:.3}",
            method.name,
            hits1[m] as f64 / n,
            hits5[m] as f64 / n
        );
    }
    for (m, method) in METHODS.iter().enumerate() {
        report(
            &format!("hit_at_1_{}", method.name),
            hits1[m] as f64 / n,
            "ratio",
        );
        report(
            &format!("hit_at_5_{}", method.name),
            hits5[m] as f64 / n,
            "ratio",
        );
    }
    let hybrid = hits5[HYBRID];
    let singles = [
        ("lexical", hits5[0]),
        ("dense_hashing", hits5[1]),
        ("dense_minilm", hits5[2]),
    ];
    let beaten: Vec<&str> = singles
        .iter()
        .filter(|(_, h)| hybrid > *h)
        .map(|(name, _)| *name)
        .collect();
    println!(
        "# hybrid_minilm hit@5 beats {} of 3 single methods ({})",
        beaten.len(),
        beaten.join(", ")
    );

    // Latency: embed the cue, then the hybrid recall; one cue at a time.
    let mut lat = Vec::with_capacity(cues.len());
    let (mut embed_lat, mut recall_lat) = (Vec::new(), Vec::new());
    let mut seen = HashSet::new();
    for &i in &cues {
        if !seen.insert(i) {
            continue;
        }
        let t = Instant::now();
        let v = model.embed(&docs[i].synopsis)?;
        let embedded = t.elapsed();
        let cue = Cue {
            max_results: 10,
            retrieval: Some(Retrieval::Hybrid),
            ..Cue::text(docs[i].synopsis.as_str())
        };
        neural.recall_embedded(&space, &cue, Some(v))?;
        let all = t.elapsed();
        lat.push(all.as_secs_f64() * 1e3);
        embed_lat.push(embedded.as_secs_f64() * 1e3);
        recall_lat.push((all - embedded).as_secs_f64() * 1e3);
    }
    for l in [&mut lat, &mut embed_lat, &mut recall_lat] {
        l.sort_by(f64::total_cmp);
    }
    println!(
        "# hybrid recall with MiniLM, {} cues, one at a time: p50 {:.2} ms, p99 {:.2} ms (embedding the cue: p50 {:.2}, p99 {:.2}; the recall: p50 {:.2}, p99 {:.2})",
        lat.len(),
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        percentile(&embed_lat, 50.0),
        percentile(&embed_lat, 99.0),
        percentile(&recall_lat, 50.0),
        percentile(&recall_lat, 99.0)
    );
    report("hybrid_recall_p99_ms", percentile(&lat, 99.0), "ms");
    compare(
        "hit_at_5_hybrid_minilm",
        hybrid as f64 / n,
        "ratio",
        Better::Higher,
        None,
        Some(singles.iter().map(|s| s.1).max().unwrap_or(0) as f64 / n),
    );
    Ok(())
}

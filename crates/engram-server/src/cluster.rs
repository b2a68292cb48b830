//! The cluster's routes (shared/API.md, "Cluster"): `GET /api/v1/cluster/nodes`,
//! `GET /api/v1/cluster/spaces/{id}`, and `X-Engram-Node` on every response of a cluster
//! node. A single node (started without `--node-id`) answers the cluster routes with 404 and
//! a message saying so.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use engram_core::SpaceId;
use engram_replication::cluster::ClusterNode;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::routes::{params, Params, Reply};
use crate::AppState;

/// The header naming the node that executed a request.
pub const NODE_HEADER: &str = "x-engram-node";

/// Adds `X-Engram-Node` to every response of a cluster node, errors included.
pub async fn node_header(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    if let Some(c) = &st.cluster {
        if !resp.headers().contains_key(NODE_HEADER) {
            if let Ok(v) = HeaderValue::from_str(&c.me.name) {
                resp.headers_mut().insert(NODE_HEADER, v);
            }
        }
    }
    resp
}

fn cluster(st: &AppState) -> Result<&Arc<ClusterNode>, ApiError> {
    st.cluster.as_ref().ok_or_else(|| {
        ApiError::NoRoute(
            "this server is a single node, not part of a cluster (start it with --node-id and \
             --cluster-addr to form or join one)"
                .into(),
        )
    })
}

/// `GET /api/v1/cluster/nodes`.
pub async fn nodes(State(st): State<AppState>, q: Params) -> Reply {
    params(q, &[])?;
    let c = cluster(&st)?;
    let state = c.state();
    let leader = c.meta_leader().await;
    let name_of = |id: u64| state.nodes.get(&id).map(|n| n.name.clone());
    let mut nodes: Vec<Value> = c
        .nodes_status()
        .await
        .into_iter()
        .map(|n| {
            json!({
                "id": n.record.name,
                "address": n.record.http,
                "cluster_address": n.record.cluster,
                "state": n.record.state.as_str(),
                "rack": n.record.rack,
                "capacity": n.record.capacity,
                "spaces_held": n.held,
                "spaces_led": n.led,
                "groups_resident": n.resident,
                "reachable": n.led.is_some(),
            })
        })
        .collect();
    nodes.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    let under = under_replicated(c);
    Ok((
        StatusCode::OK,
        Json(json!({
            "node": c.me.name,
            "epoch": state.epoch,
            "replicas": state.placement.config().copies,
            "metadata_leader": leader.and_then(name_of),
            "nodes": nodes,
            "spaces": state.spaces.len(),
            "spaces_without_quorum": under,
        })),
    ))
}

/// Spaces with fewer than a quorum of their replicas on live nodes.
pub fn under_replicated(c: &ClusterNode) -> Vec<String> {
    let state = c.state();
    state
        .spaces
        .iter()
        .filter(|(_, s)| {
            let live = s
                .replicas
                .iter()
                .filter(|id| {
                    state
                        .nodes
                        .get(id)
                        .is_some_and(|n| n.state == engram_replication::meta::NodeState::Live)
                })
                .count();
            live < s.replicas.len() / 2 + 1
        })
        .map(|(id, _)| id.as_str().to_string())
        .collect()
}

/// `GET /api/v1/cluster/spaces/{id}`: the space's replica set and its group's leader as this
/// node knows it.
pub async fn space(
    State(st): State<AppState>,
    q: Params,
    p: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Reply {
    params(q, &[])?;
    let c = cluster(&st)?;
    let id = SpaceId::new(crate::routes::path_id(p)?)?;
    let state = c.state();
    let Some(rec) = state.spaces.get(&id) else {
        return Err(ApiError::SpaceNotFound(format!(
            "memory space {:?} does not exist in this cluster",
            id.as_str()
        )));
    };
    let node = |nid: u64| {
        state
            .nodes
            .get(&nid)
            .map(|n| json!({"id": n.name, "address": n.http, "state": n.state.as_str()}))
    };
    let leader = if rec.replicas.contains(&c.id()) {
        match c.node.group(&id).await {
            Ok(g) => g.current_leader().await,
            Err(_) => None,
        }
    } else {
        None
    };
    Ok((
        StatusCode::OK,
        Json(json!({
            "id": id.as_str(),
            "epoch": state.epoch,
            "dimension": rec.dimension,
            "replicas": rec.replicas.iter().filter_map(|r| node(*r)).collect::<Vec<_>>(),
            "primary": rec.replicas.first().and_then(|r| node(*r)),
            "leader": leader.and_then(node),
        })),
    ))
}

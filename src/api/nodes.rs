//! `/v1/nodes`: the nodes of the cluster this server belongs to.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};

use super::{ok_json, ApiError, AppState, Endpoint};
use crate::actors::store::ListNodes;
use crate::actors::supervisor::ListBackends;
use crate::model::{NodeInfo, NodeState};

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(Endpoint::new("/nodes").get(list).build());
}

/// Who this server is, for `GET /v1/nodes`.
#[derive(Debug, Clone)]
pub struct ThisNode {
    /// Its `node_id`.
    pub node_id: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// A node of a cluster (the list comes from the shared nodes table); else it is
    /// the only node and answers for itself.
    pub cluster: bool,
}

/// The nodes with their backends' capacity and their last heartbeat. On a cluster,
/// every node registered in the shared database (lost ones too, until they come
/// back); on a single server, this server alone (generation 0, heartbeat now).
#[utoipa::path(
    get,
    path = "/v1/nodes",
    tag = "nodes",
    responses((status = 200, description = "Every node, by node_id", body = Vec<NodeInfo>))
)]
async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.node.cluster {
        return Ok(ok_json(&state.store.send(ListNodes).await??));
    }
    let backends = state.supervisor.send(ListBackends).await?;
    Ok(ok_json(&[NodeInfo {
        node_id: state.node.node_id.clone(),
        generation: 0,
        state: NodeState::Alive,
        backends: crate::cluster::capacity(&backends),
        started_at: state.node.started_at,
        last_heartbeat: Utc::now(),
    }]))
}

//! The nodes of a cluster, as `GET /v1/nodes` answers them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::workload::rfc3339;

/// One backend of a node: how many workloads it runs at once and how many it runs now.
///
/// Invariant: as of the node's last heartbeat (or, for the answering node on a single
/// node, of the moment of the answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackendCapacity {
    /// The backend's registry name.
    pub name: String,
    /// Workloads it runs at once (its max concurrency).
    pub slots: usize,
    /// Workloads it runs now.
    pub running: usize,
}

/// Whether a node is in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Registered and heartbeating.
    Alive,
    /// Declared lost by a survivor after missing its heartbeats (fenced): its work was
    /// failed or put back in the queue.
    Lost,
}

impl NodeState {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Alive => "alive",
            NodeState::Lost => "lost",
        }
    }
}

impl std::str::FromStr for NodeState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "alive" => Ok(NodeState::Alive),
            "lost" => Ok(NodeState::Lost),
            other => Err(format!("unknown node state {other:?}")),
        }
    }
}

/// One node of `GET /v1/nodes`.
///
/// Invariant: `generation` only grows for a `node_id`; a node only writes the status of
/// work it claimed under its current generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeInfo {
    /// The node's id (`node_id` in its configuration).
    pub node_id: String,
    /// The fencing token: bumped at each registration and when the node is declared
    /// lost. 0 on a single node, which never registers.
    pub generation: i64,
    /// `alive` or `lost`.
    pub state: NodeState,
    /// Its backends with their slots and running counts.
    pub backends: Vec<BackendCapacity>,
    /// When it registered (started).
    #[serde(serialize_with = "rfc3339")]
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    #[serde(serialize_with = "rfc3339")]
    pub last_heartbeat: DateTime<Utc>,
}

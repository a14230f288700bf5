//! Helpers shared by the SQLite store's integration tests.

use std::time::Duration;

use seqlease_core::{Command, GrantRequest, SpaceName};

/// A grant of `op` in `space` (projection type `t`, owner `w`, 30 s TTL, no fence).
pub fn grant(space: &SpaceName, op: impl Into<String>) -> Command {
    Command::Grant(GrantRequest {
        space: space.clone(),
        operation_id: op.into(),
        projection_type: "t".to_string(),
        owner: "w".to_string(),
        ttl: Duration::from_secs(30),
        fence: None,
    })
}

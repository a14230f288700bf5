//! Late work: committing a finished result after its lease ran out.
//!
//! A worker that stalled past its TTL or was cut off by a partition may come back holding
//! a finished operation whose slot already went to recovery (an expired lease, or a
//! `GAP(expired)` that readers have passed). [`Lease::commit_late`](crate::Lease::commit_late)
//! and [`Space::commit_late`](crate::Space::commit_late) hand it to the store, which
//! re-sequences it: the operation is committed at a fresh seq with recovery metadata
//! (`RecoveryType::Late`, the original seq and operation id) and the old slot stays as it
//! was. The lease token still authenticates the work, a stale fence is refused (I9), and an
//! operation already committed anywhere in the space is answered with its seq, never
//! duplicated (I6). See `seqlease_core::late` for the rules every store applies.

use seqlease_core::{LateCommit, LateOutcome, LeaseKey, OperationBody, Reply, StoreError};

use crate::engine::Engine;
use crate::error::Result;
use crate::lease::check_payload;
use crate::space::unreachable_reply;

/// Send one late commit to the store and wake readers if the watermark moved.
pub(crate) async fn commit_late(
    engine: &Engine,
    key: LeaseKey,
    body: OperationBody,
) -> Result<LateOutcome> {
    check_payload(engine.config(), "operation payload", body.payload.len())?;
    let (space, seq) = (key.space.clone(), key.seq);
    let outcome = engine
        .store()
        .commit_late(vec![LateCommit { key, body }])
        .await?;
    engine.inner.spaces.apply_progress(&outcome.progress);
    match outcome.replies.into_iter().next() {
        Some(Ok(Reply::Late(late))) => {
            tracing::info!(%space, seq, at = late.seq(), outcome = ?late, "late work committed");
            Ok(late)
        }
        Some(Ok(other)) => unreachable_reply("late commit", other),
        Some(Err(refused)) => Err(refused.into()),
        None => Err(StoreError::Backend {
            backend: "engine",
            detail: format!(
                "store answered a late commit for {space}/{seq} with no reply; this is a bug in the store"
            ),
        }
        .into()),
    }
}

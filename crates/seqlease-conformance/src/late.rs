//! Late work: results committed after their lease ran out are re-sequenced at a fresh seq
//! with `RecoveryType::Late`, never duplicated (I6), never written into a closed slot (I2).
//! Part of [`recovery_suite!`](crate::recovery_suite).

use std::time::Duration;

use seqlease::cleanup::CleanupConfig;
use seqlease::{
    Error, GapReason, Grant, LateOutcome, LeaseError, OperationBody, RecoveryType, SpaceConfig,
    Token,
};
use seqlease_core::SlotEventKind;

use crate::harness::Harness;

const TTL: Duration = Duration::from_secs(30);
const SOON: Duration = Duration::from_secs(20);

fn body(tag: &str) -> OperationBody {
    OperationBody::new("update", format!("{{\"late\":\"{tag}\"}}"))
}

fn refused(e: &Error) -> bool {
    matches!(e, Error::Lease(LeaseError::LateRefused { .. }))
}

/// Every path of a late commit: refused while live, re-sequenced once the lease expired
/// (before and after its gap was written), answered (not duplicated) when the work is
/// already committed, refused for a released slot and for a wrong token.
pub async fn late_work_is_resequenced_never_duplicated(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let s = engine
        .space_with("late", SpaceConfig { capacity: 100 })
        .await
        .expect("space");
    let grant = |op: &str| Grant::new(op, "orders").ttl(TTL);
    let mut a = s.grant(grant("late-a")).await.unwrap(); // seq 1: stalls past its TTL
    let mut b = s.grant(grant("late-b")).await.unwrap(); // seq 2: its result is recovered
    b.record_result(body("b")).await.unwrap();
    let (a_token, a_seq) = (a.token(), a.seq());

    let live = s.commit_late(a_seq, a_token, body("a")).await.unwrap_err();
    assert!(refused(&live), "a live lease commits normally: {live}");
    assert!(live.to_string().contains("still live"), "{live}");

    fx.advance(TTL);
    let expired = a.commit(body("a")).await.unwrap_err();
    assert!(
        matches!(expired, Error::Lease(LeaseError::Expired { .. })),
        "{expired}"
    );
    // Expired, not yet cleaned: re-sequenced at once; slot 1 stays for the cleaner.
    let outcome = a.commit_late(body("a")).await.unwrap();
    assert_eq!(
        outcome,
        LateOutcome::Resequenced {
            seq: 3,
            original_seq: 1
        }
    );
    assert_eq!(s.watermark(), 0, "slots 1 and 2 are still unresolved");

    let cleanup = engine
        .cleanup()
        .config(CleanupConfig {
            cleaner: "c1".into(),
            ..CleanupConfig::default()
        })
        .build()
        .await
        .unwrap();
    let report = cleanup.run_once().await.unwrap();
    // Slot 1's operation already lives at 3: the cleaner supersedes it (I6); slot 2's
    // recorded result is retried in place.
    assert_eq!(
        (report.claimed, report.duplicates, report.recovered_total()),
        (2, 1, 1)
    );
    assert_eq!(s.wait_for(3, SOON).await.unwrap(), 3);
    // Recovery already committed b's recorded result in place: answered, not duplicated.
    assert_eq!(
        b.commit_late(body("b-again")).await.unwrap(),
        LateOutcome::AlreadyCommitted { seq: 2 }
    );

    // A slot already closed as GAP(expired): the spooled result comes back by token.
    let d = s.grant(grant("late-d")).await.unwrap(); // seq 4
    let (d_seq, d_token) = (d.seq(), d.token());
    d.abandon();
    fx.advance(TTL);
    cleanup.run_once().await.unwrap();
    assert_eq!(s.wait_for(4, SOON).await.unwrap(), 4);
    let first = s.commit_late(d_seq, d_token, body("d")).await.unwrap();
    assert_eq!(
        first,
        LateOutcome::Resequenced {
            seq: 5,
            original_seq: 4
        }
    );
    assert_eq!(s.wait_for(5, SOON).await.unwrap(), 5, "readers are woken");
    let again = s.commit_late(d_seq, d_token, body("d")).await.unwrap();
    assert_eq!(again, LateOutcome::Duplicate { existing: 5 }, "I6");

    // Refusals write nothing.
    let e = s.grant(grant("late-e")).await.unwrap(); // seq 6
    let e_token = e.token();
    e.release(None).await.unwrap();
    let released = s.commit_late(6, e_token, body("e")).await.unwrap_err();
    assert!(refused(&released), "{released}");
    let wrong = s
        .commit_late(6, Token([7; 16]), body("e"))
        .await
        .unwrap_err();
    assert!(
        matches!(wrong, Error::Lease(LeaseError::WrongToken { seq: 6, .. })),
        "{wrong}"
    );
    let unknown = s.commit_late(99, e_token, body("e")).await.unwrap_err();
    assert!(
        matches!(
            unknown,
            Error::Lease(LeaseError::UnknownSlot { seq: 99, .. })
        ),
        "{unknown}"
    );

    assert_eq!(s.wait_for(6, SOON).await.unwrap(), 6);
    let log = engine.store().read(s.name(), 1, 100).await.unwrap();
    assert_eq!(log.len(), 6, "nothing appended by the refusals");
    let superseded = log[0].gap().map(|g| (g.reason, g.superseded_by));
    assert_eq!(superseded, Some((GapReason::Superseded, Some(3))));
    assert_eq!(log[3].gap().map(|g| g.reason), Some(GapReason::Expired));
    assert_eq!(log[5].gap().map(|g| g.reason), Some(GapReason::Released));
    for (i, op_id, original) in [(2, "late-a", 1), (4, "late-d", 4)] {
        let op = log[i].operation().expect("late work committed");
        let rec = op.recovery.as_ref().expect("recovery metadata");
        assert_eq!(
            (
                op.operation_id.as_str(),
                rec.recovery_type,
                rec.original_seq,
                rec.original_operation_id.as_str()
            ),
            (op_id, RecoveryType::Late, original, op_id)
        );
    }
    let mut ops: Vec<&str> = log
        .iter()
        .filter_map(|e| e.operation())
        .map(|o| o.operation_id.as_str())
        .collect();
    ops.sort_unstable();
    assert_eq!(ops, ["late-a", "late-b", "late-d"], "each operation once");
    let history = s.history(1).await.unwrap();
    assert!(
        history.iter().any(|e| e.kind == SlotEventKind::Recovered
            && e.detail.as_deref() == Some("late work re-sequenced at seq 3")),
        "the late commit is audited on the original slot: {history:#?}"
    );
}

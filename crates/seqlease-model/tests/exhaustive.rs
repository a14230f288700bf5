//! The protocol model, checked exhaustively: the protocol as built satisfies every property
//! within the bound, every reachability property is reached (so the bound exercises the
//! paths the guarantees are about), and every seeded bug yields a counterexample.
//!
//! The default run checks [`test_bound`]; `SEQLEASE_MODEL_BOUND=full cargo test -p
//! seqlease-model` checks [`Bound::DEFAULT`] (slower; see docs/verification.md).

use seqlease_model::{Bound, Mutation, ProtocolModel, check, properties};

/// The bound of the default `cargo test` run.
fn test_bound() -> Bound {
    match std::env::var("SEQLEASE_MODEL_BOUND").as_deref() {
        Ok("full") => Bound::DEFAULT,
        _ => Bound {
            max_slots: 2,
            max_time: 3,
            ..Bound::DEFAULT
        },
    }
}

#[test]
fn protocol_as_built_satisfies_every_guarantee_within_the_bound() {
    let bound = test_bound();
    let verdict = check(ProtocolModel::new(bound), None);
    println!("{bound:?}\n{}", verdict.summary());
    for (name, path) in &verdict.violations {
        println!("VIOLATED {name}:\n{path}");
    }
    assert!(
        verdict.violations.is_empty(),
        "counterexamples: {:?}",
        verdict.violations.keys()
    );
    assert!(
        verdict.unreached.is_empty(),
        "the bound never exercises: {:?}",
        verdict.unreached
    );
}

/// Check `mutation` and require a counterexample to the property it breaks.
fn assert_caught(mutation: Mutation, bound: Bound) {
    let expected = mutation.breaks();
    let verdict = check(ProtocolModel::mutated(bound, mutation), Some(expected));
    println!("{mutation:?}: {}", verdict.summary());
    match verdict.violations.get(expected) {
        Some(path) => println!("counterexample to {expected}:\n{path}"),
        None => panic!(
            "{mutation:?} should break {expected:?}, but the checker found no counterexample \
             to it (found: {:?})",
            verdict.violations.keys()
        ),
    }
}

/// A small world: enough for most seeded bugs to show.
const SMALL: Bound = Bound {
    max_slots: 2,
    max_time: 2,
    ..Bound::DEFAULT
};

/// Fencing bugs need a takeover of the resource: time for one lease to run out.
const FENCING: Bound = Bound {
    max_slots: 2,
    max_time: 3,
    ..Bound::DEFAULT
};

#[test]
fn commit_ignoring_expiry_breaks_commit_authority() {
    assert_caught(Mutation::CommitIgnoresExpiry, SMALL);
}

#[test]
fn unchecked_fence_breaks_fencing() {
    assert_caught(Mutation::FenceNotChecked, FENCING);
}

#[test]
fn epoch_kept_on_takeover_breaks_fencing() {
    assert_caught(Mutation::EpochKeptOnTakeover, FENCING);
}

#[test]
fn cleaner_claiming_highest_first_breaks_ordered_recovery() {
    assert_caught(Mutation::CleanerSkipsOrder, SMALL);
}

#[test]
fn cleaners_without_exclusivity_break_ordered_recovery() {
    assert_caught(Mutation::CleanersNotExclusive, SMALL);
}

#[test]
fn late_resolve_applied_breaks_single_resolution() {
    assert_caught(Mutation::DoubleResolve, SMALL);
}

#[test]
fn gap_dropping_work_breaks_recorded_work_is_kept() {
    assert_caught(Mutation::GapDropsWork, SMALL);
}

#[test]
fn release_dropping_work_breaks_recorded_work_is_kept() {
    assert_caught(Mutation::ReleaseDropsWork, SMALL);
}

#[test]
fn commit_without_operation_index_breaks_exactly_once() {
    assert_caught(Mutation::CommitSkipsOperationIndex, SMALL);
}

#[test]
fn watermark_over_open_slots_breaks_the_watermark() {
    assert_caught(Mutation::WatermarkSkipsOpenSlots, SMALL);
}

#[test]
fn grant_reusing_a_released_seq_breaks_allocation() {
    assert_caught(Mutation::GrantReusesReleasedSeq, SMALL);
}

#[test]
fn every_mutation_has_a_test() {
    // The list above names each mutation once; this keeps it honest when one is added.
    assert_eq!(Mutation::ALL.len(), 11);
    for m in Mutation::ALL {
        assert!(properties::all().iter().any(|p| p.name == m.breaks()));
    }
}

/// A finding of the model, now fixed in every store: a cleaner that restarts under the same
/// fixed `CleanupConfig::cleaner` id used to be "itself" to the store, so its dead
/// incarnation's live claims did not block it, yet it could not claim them either, and it
/// resolved the slots *after* them first (an I8 violation). A cleaner now re-claims its own
/// live claims; the store conformance test `cleaner_reclaims_its_own_unresolved_claims_first`
/// holds every store to the same rule.
#[test]
fn restarted_cleaner_reusing_its_id_recovers_in_order() {
    let bound = Bound {
        cleaner_id_survives_restart: true,
        ..SMALL
    };
    let verdict = check(ProtocolModel::new(bound), Some(properties::I8));
    assert!(
        !verdict.violations.contains_key(properties::I8),
        "{}",
        verdict.summary()
    );
}

//! The store conformance suite: one set of checks that every seqlease store must pass.
//!
//! A store proves itself by implementing [`Harness`] (how to make a fresh, empty store and
//! how to move its clock) and invoking [`conformance_suite!`] in a test file. The suite
//! checks the guarantees of DESIGN §3 through the public engine API, under concurrency (16+
//! tasks) and with random operation sequences held against a reference model
//! ([`model`]). Time is driven by the harness's [`TimeControl`], never by sleeping.

pub mod consumer;
pub mod harness;
pub mod late;
pub mod model;
pub mod postgres;
pub mod recovery;
pub mod resources;
pub mod suite;
pub mod worker;

pub use harness::{Fixture, Harness};
pub use seqlease_core::TimeControl;

/// Expand to one `#[tokio::test]` per conformance check plus the model test, each on a fresh
/// store from `$harness` (an expression evaluating to a [`Harness`]).
#[macro_export]
macro_rules! conformance_suite {
    ($harness:expr) => {
        $crate::conformance_suite!(@each $harness;
            i1_seqs_are_contiguous_from_one,
            i1_concurrent_grants_never_repeat_a_seq,
            i1_two_engines_on_one_store_share_the_counter,
            i2_resolved_slot_never_changes,
            i2_racing_commit_and_release_resolve_once,
            i3_wrong_token_and_unknown_slot_write_nothing,
            i3_commit_after_expiry_is_refused,
            i3_expiry_boundary_uses_store_clock,
            i3_renew_extends_and_counts,
            i4_acknowledged_commits_are_readable,
            i4_commits_survive_reopen,
            i5_release_with_recorded_work_goes_to_recovery,
            i6_duplicate_operation_points_to_existing_seq,
            i6_concurrent_duplicates_commit_once,
            i7_watermark_waits_for_the_lowest_open_slot,
            i7_watermark_is_monotonic_under_concurrency,
            i7_reads_are_deterministic_and_bounded_by_watermark,
            i7_reader_follows_out_of_order_commits,
            i7_wait_for_times_out,
            capacity_fails_fast_or_waits_to_be_woken,
            capacity_and_barrier_waiters_under_contention_are_all_woken,
            bad_input_is_refused_and_changes_nothing,
            dropped_or_cancelled_lease_releases_its_slot,
            grant_many_in_one_batch,
            local_deadline_is_never_after_store_expiry,
            execute_one_answers_as_a_batch_of_one,
            inline_execution_answers_as_execute_one,
            inline_grant_hands_back_a_request_refused_for_capacity,
            commit_and_grant_chains_leases_in_one_call,
        );
        #[test]
        fn model_random_sequences_match_reference() {
            $crate::model::run(&$harness);
        }
    };
    (@each $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let harness = $harness;
                $crate::suite::$name(&harness).await;
            }
        )*
    };
}

/// Expand to one `#[tokio::test]` per recovery check, each on a fresh store from `$harness`.
/// For stores that implement the recovery methods of the `Store` trait.
#[macro_export]
macro_rules! recovery_suite {
    ($harness:expr) => {
        $crate::recovery_suite!(@each $harness;
            build_checks_store_support,
            chain_recovers_in_place,
            chain_recovers_at_new_seq,
            racing_cleaners_resolve_each_slot_once,
            cleaner_killed_between_claim_and_resolve,
            cleaner_reclaims_its_own_unresolved_claims_first,
            commit_racing_expiry_one_winner,
            cascade_of_ten_thousand,
            cascade_across_many_spaces_pauses_per_batch,
            spaces_are_cleaned_side_by_side,
            policy_switches_without_losing_work,
            failing_resolver_goes_to_manual_queue,
            background_service_resolves_expired_slots,
            recovery_never_duplicates_a_committed_operation,
            late_work_is_resequenced_never_duplicated,
            clock_steps_change_no_decision_already_made,
        );
    };
    (@each $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let harness = $harness;
                $crate::recovery::$name(&harness).await;
            }
        )*
    };
}

/// Expand to one test per resource-lease check, each on a fresh store from `$harness`.
/// For stores that implement resource leases and check fences.
#[macro_export]
macro_rules! resource_suite {
    ($harness:expr) => {
        $crate::resource_suite!(@each $harness;
            one_of_many_agents_wins,
            failover_grows_the_epoch,
            paused_holder_is_fenced_off,
            stale_fenced_work_is_parked_not_recovered,
            max_renewals_are_enforced,
            blocking_acquire_is_woken_by_release,
            force_release_of_a_crashed_agent,
            shutdown_releases_and_stale_leases_expire,
            ensure_and_validate_are_local,
        );
        #[test]
        fn resource_model_matches_reference() {
            $crate::resources::model_matches_reference(&$harness);
        }
    };
    (@each $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let harness = $harness;
                $crate::resources::$name(&harness).await;
            }
        )*
    };
}

/// Expand to the lease-history check on a fresh store from `$harness`. For stores that
/// implement recovery and `slot_history` / `prune_slot_history`.
#[macro_export]
macro_rules! history_suite {
    ($harness:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn lease_history_records_every_transition() {
            let harness = $harness;
            $crate::recovery::lease_history_records_every_transition(&harness).await;
        }
    };
}

/// Expand to one test per consumer check (checkpoints, restart, redelivery, retention,
/// deterministic replay), each on a fresh store from `$harness`. For stores that implement
/// the consumer methods of the `Store` trait and recovery.
#[macro_export]
macro_rules! consumer_suite {
    ($harness:expr) => {
        $crate::consumer_suite!(@each $harness;
            checkpoint_is_compare_and_swap,
            consumer_restarts_from_checkpoint,
            at_least_once_redelivers_after_a_crash,
            prune_respects_retaining_consumers,
            replay_is_deterministic,
        );
    };
    (@each $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let harness = $harness;
                $crate::consumer::$name(&harness).await;
            }
        )*
    };
}

/// Expand to one test per worker-runtime check, each on a fresh store from `$harness`.
/// For stores that implement recovery (the checks finish recorded work with the cleanup
/// service).
#[macro_export]
macro_rules! worker_suite {
    ($harness:expr) => {
        $crate::worker_suite!(@each $harness;
            input_order_is_seq_order,
            handler_errors_follow_the_policy,
            panics_release_the_slot_with_the_message,
            cancelled_run_leaves_no_slot_stuck,
            slow_handler_kept_alive_by_the_heartbeat,
            heartbeat_timer_renews_in_the_background,
            one_heartbeat_renews_every_lease,
            shutdown_drains_then_releases,
            bad_settings_are_refused,
        );
    };
    (@each $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let harness = $harness;
                $crate::worker::$name(&harness).await;
            }
        )*
    };
}

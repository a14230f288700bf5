//! # seqlease-model
//!
//! A model of the seqlease protocol, checked exhaustively with
//! [stateright](https://docs.rs/stateright) under `cargo test`.
//!
//! The conformance suite tests the stores on the schedules the tests happen to produce. This
//! crate checks the *protocol* on **every** schedule within a bound: every interleaving of
//! workers granting, renewing, recording, committing, releasing and crashing; cleaners
//! claiming, resolving, crashing mid-recovery and re-sequencing parked work; fenced workers
//! acquiring, renewing and losing a resource; and the store clock advancing between any two
//! of those steps. Each guarantee of DESIGN.md §3 (I1–I3, I5–I10) is a property
//! ([`properties`]); each seeded protocol bug ([`Mutation`]) must produce a counterexample.
//!
//! ## What is modelled, and how it maps to the code
//!
//! | model | code |
//! |---|---|
//! | [`state::Slot`]: token, owner, expiry, fence, partial/result, resolution, claim, attempts | `seqlease-memory/src/space.rs` `Slot`, `Claim` |
//! | `Grant`, `Renew`, `RecordPartial`, `RecordResult`, `Commit`, `Release` | `SpaceState::apply` (`Command`s of `seqlease-core/src/command.rs`) |
//! | `Claim` (ascending, one cleaner per space, up to `claim_limit`) | `SpaceState::claim`, `Store::claim_expired` |
//! | `Resolve` (in place, new seq, gap + park; claim-lost; duplicate → superseded) | `SpaceState::resolve_claimed`, `append_committed` |
//! | `Resequence` | `SpaceState::resequence` (`settle_parked`) |
//! | `Acquire`, `RenewResource`, expiry by the clock, epoch + 1 on a change of holder | `seqlease-memory/src/resources.rs` |
//! | fence checked at grant and at commit | `check_fence` in `space.rs` |
//! | `CrashCleaner` (claims run out, another cleaner takes over) | `recovery_suite!` `cleaner_killed_between_claim_and_resolve` |
//!
//! ## Abstractions (where the model is coarser than the code)
//!
//! - **One space, one resource.** Spaces are independent in the store (separate counters,
//!   watermarks, locks); resources only meet spaces through fences.
//! - **Payloads are abstract.** Partial work, a result and an operation are flags and an
//!   operation id; recording twice is recording once. The recovery chain is a
//!   nondeterministic verdict ([`Choice`]): every verdict it *could* give (recover in
//!   place, at a new seq, or gap and park when work was recorded; gap otherwise) is
//!   explored, which covers every resolver, policy and load level.
//! - **Time is discrete**: a `Tick` advances the store clock by one unit between any steps;
//!   TTLs are a few units. Local safe deadlines of lease handles are not modelled (they only
//!   make a worker give up earlier, which the model already explores).
//! - **Tokens** are unique numbers (the store's are 128-bit random secrets); a claim's token
//!   is its attempt number on the slot.
//! - **Each store step is atomic**, as a command is under the memory store's space lock
//!   and a batch is in an SQL transaction. Group commit, the barrier and the keeper's local
//!   state are not in this model; see `docs/verification.md` for what checks them.
//! - **Bounded**: see [`Bound`]. Within it every behaviour is explored; beyond it nothing
//!   is claimed. Capacity limits, cascades (recovery mode) and operator actions on the
//!   recovery queue (retry, discard, manual) are not modelled; I4 (durability) is a
//!   property of the storage engines and is not modelled.
//!
//! ## The bound checked by default
//!
//! [`Bound::DEFAULT`]: 3 workers (the last two fenced on one resource; workers 0 and 2
//! share an operation id), 2 cleaners with one fault between them (a crash or a stall
//! mid-recovery), at most 4 slots, workers active up to t = 3, lease TTL 2, claim TTL 1,
//! resource TTL 2, claims of up to 2 slots. The default `cargo test` checks it with at most
//! 2 slots (7.5 million states); `docs/verification.md` gives the figures.
//!
//! ```
//! use seqlease_model::{check, Bound, ProtocolModel};
//!
//! let small = Bound { workers: 1, fenced_workers: 0, operations: 1, cleaners: 1, max_slots: 2, max_time: 2, ..Bound::DEFAULT };
//! let verdict = check(ProtocolModel::new(small), None);
//! assert!(verdict.violations.is_empty(), "{:?}", verdict.violations);
//! ```

#![warn(missing_docs)]

pub mod check;
pub mod model;
pub mod properties;
pub mod state;

pub use check::{Verdict, check};
pub use model::{Action, Bound, Choice, Mutation, ProtocolModel};

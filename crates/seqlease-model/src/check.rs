//! Running the checker and reading its verdict.
//!
//! [`check`] explores every state of a [`ProtocolModel`] breadth first (so a counterexample
//! is a shortest one) and reports how many states it saw, how long it took, which safety
//! properties it found violated (with the path that violates each), and which reachability
//! properties it never reached.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use stateright::{Checker, Expectation, HasDiscoveries, Model, Path};

use crate::model::{Action, ProtocolModel};
use crate::state::State;

/// What one exhaustive check found.
#[derive(Debug)]
pub struct Verdict {
    /// Distinct states explored.
    pub unique_states: usize,
    /// States generated, repeats included.
    pub states: usize,
    /// Length of the longest shortest path explored.
    pub max_depth: usize,
    /// Wall-clock time of the check.
    pub elapsed: Duration,
    /// Violated safety properties, each with its counterexample rendered by [`render`].
    pub violations: BTreeMap<&'static str, String>,
    /// Reachability properties that no explored state satisfied.
    pub unreached: Vec<&'static str>,
}

impl Verdict {
    /// One line for logs and docs.
    pub fn summary(&self) -> String {
        format!(
            "{} unique states ({} generated), depth {}, {:.1} s",
            self.unique_states,
            self.states,
            self.max_depth,
            self.elapsed.as_secs_f64()
        )
    }
}

/// Check `model` exhaustively. With `stop_at`, stop as soon as that property has a
/// discovery (a mutation test needs one counterexample, not the whole space).
pub fn check(model: ProtocolModel, stop_at: Option<&'static str>) -> Verdict {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let properties = model.properties();
    let mut builder = model.clone().checker().threads(threads);
    if let Some(name) = stop_at {
        builder = builder.finish_when(HasDiscoveries::AnyOf(BTreeSet::from([name])));
    }
    let started = Instant::now();
    let checker = builder.spawn_bfs().join();
    let elapsed = started.elapsed();
    let discoveries = checker.discoveries();
    let mut violations = BTreeMap::new();
    let mut unreached = Vec::new();
    for p in &properties {
        match (&p.expectation, discoveries.get(p.name)) {
            (Expectation::Sometimes, None) => unreached.push(p.name),
            (Expectation::Sometimes, Some(_)) | (_, None) => {}
            (_, Some(path)) => {
                violations.insert(p.name, render(&model, path));
            }
        }
    }
    Verdict {
        unique_states: checker.unique_state_count(),
        states: checker.state_count(),
        max_depth: checker.max_depth(),
        elapsed,
        violations,
        unreached,
    }
}

/// A counterexample as text: each step with the clock, then the final state in full.
pub fn render(_model: &ProtocolModel, path: &Path<State, Action>) -> String {
    let mut out = String::new();
    let steps = path.clone().into_vec();
    for (i, (state, action)) in steps.iter().enumerate() {
        if let Some(action) = action {
            out.push_str(&format!("{:>3}. t={} {:?}\n", i + 1, state.now, action));
        }
    }
    out.push_str(&format!("final state: {:#?}\n", path.last_state()));
    out
}

//! The LEASED seqs of a space, ascending.
//!
//! A grant always takes the next seq, so a new seq is larger than every one already here:
//! it is pushed at the back. Leases mostly end in about the order they were granted, so a
//! removal is mostly near the front, where `VecDeque::remove` moves the shorter side. The
//! `BTreeSet` this replaces spent ~300 instructions per grant→commit cycle on its insert
//! and remove. The price is the worst case: a removal from the middle moves up to half of
//! the in-flight seqs (at the default capacity of 10,000, 40 KB). A space with millions of
//! leases in flight that end in random order would want a tree again.

use std::collections::VecDeque;

#[derive(Debug, Default)]
pub(crate) struct LeasedSeqs {
    seqs: VecDeque<u64>,
}

impl LeasedSeqs {
    /// Add `seq`, the space's newest slot.
    pub(crate) fn push_newest(&mut self, seq: u64) {
        debug_assert!(self.seqs.back().is_none_or(|&last| last < seq));
        self.seqs.push_back(seq);
    }

    /// Remove `seq` if it is here.
    pub(crate) fn remove(&mut self, seq: u64) {
        // Most often the oldest lease ends first.
        if self.seqs.front() == Some(&seq) {
            self.seqs.pop_front();
        } else if let Ok(at) = self.seqs.binary_search(&seq) {
            self.seqs.remove(at);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Ascending.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.seqs.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any order of removals leaves what a `BTreeSet` would hold, in ascending order.
        #[test]
        fn holds_what_a_sorted_set_holds(ops in proptest::collection::vec((any::<bool>(), 0usize..64), 1..200)) {
            let (mut seqs, mut model) = (LeasedSeqs::default(), BTreeSet::new());
            let mut next = 1;
            for (grant, pick) in ops {
                if grant || model.is_empty() {
                    seqs.push_newest(next);
                    model.insert(next);
                    next += 1;
                } else {
                    // An existing seq, or (pick past the end) one that is not here.
                    let seq = model.iter().copied().nth(pick).unwrap_or(next + 7);
                    seqs.remove(seq);
                    model.remove(&seq);
                }
                prop_assert_eq!(seqs.len(), model.len());
                prop_assert!(seqs.iter().eq(model.iter().copied()));
            }
        }
    }
}

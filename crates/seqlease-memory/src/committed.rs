//! The index of committed operation ids of one space (I6): operation id → seq.
//!
//! Every commit looks its operation id up here and then inserts it, under the space's lock,
//! so the index must stay cheap as a log grows to millions of entries:
//! - **Keyed by a 64-bit hash of the id**, not by the id: an entry is 16 bytes and no copy
//!   of the id is made. The slot at the stored seq holds the id, so every hit is confirmed
//!   against it; two ids with the same hash (vanishingly rare, but possible) keep the
//!   second one in a small map keyed by the id itself.
//! - **Split into shards by hash.** A hash map grows by rehashing everything it holds at
//!   once; one map of a few million entries did so in ~80 ms with the lock held, every
//!   commit of the space waiting behind it. A shard grows with 1/256 of the entries.
//!   The shards appear only once the index holds [`SPLIT_AT`] ids: 256 empty maps are
//!   12 KB, and an application with a space per tenant has many spaces of few entries.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use crate::space::Slots;

const SHARDS: usize = 256;

/// Below this many ids one map is small enough to grow at once (~1 ms).
const SPLIT_AT: usize = 1 << 16;

type Shard = HashMap<u64, u64, BuildHasherDefault<PreHashed>>;

/// Operation id → seq of its committed entry, for one space.
#[derive(Debug)]
pub(crate) struct CommittedIndex {
    hasher: foldhash::fast::RandomState,
    /// One map, or [`SHARDS`] of them once there are [`SPLIT_AT`] ids (a power of two
    /// either way, so a shard is picked with a mask).
    shards: Vec<Shard>,
    /// Ids whose hash was already taken by another committed id.
    collided: HashMap<String, u64>,
    /// Tests: every id hashes alike, so every path meets a collision.
    #[cfg(test)]
    all_collide: bool,
}

impl Default for CommittedIndex {
    fn default() -> Self {
        CommittedIndex {
            hasher: foldhash::fast::RandomState::default(),
            shards: vec![Shard::default()],
            collided: HashMap::new(),
            #[cfg(test)]
            all_collide: false,
        }
    }
}

impl CommittedIndex {
    /// The seq where `operation_id` is committed, if it is.
    pub(crate) fn get(&self, operation_id: &str, slots: &Slots) -> Option<u64> {
        let hash = self.hash(operation_id);
        match self.shard(hash).get(&hash) {
            Some(&seq) if committed_id(slots, seq) == Some(operation_id) => Some(seq),
            // Absent, or another id's: a collided id lives in the side map.
            _ if self.collided.is_empty() => None,
            _ => self.collided.get(operation_id).copied(),
        }
    }

    /// Record that `operation_id`, not yet committed (the caller checked with
    /// [`CommittedIndex::get`]), is committed at `seq`.
    pub(crate) fn insert(&mut self, operation_id: &str, seq: u64) {
        let hash = self.hash(operation_id);
        let at = self.shard_of(hash);
        let shard = &mut self.shards[at];
        if let std::collections::hash_map::Entry::Vacant(free) = shard.entry(hash) {
            free.insert(seq);
            if self.shards.len() == 1 && self.shards[0].len() >= SPLIT_AT {
                self.split();
            }
        } else {
            self.collided.insert(operation_id.to_owned(), seq);
        }
    }

    /// Spread the one map over [`SHARDS`] maps.
    fn split(&mut self) {
        let one = std::mem::take(&mut self.shards[0]);
        let room = 2 * one.len() / SHARDS;
        self.shards = (0..SHARDS)
            .map(|_| Shard::with_capacity_and_hasher(room, Default::default()))
            .collect();
        for (hash, seq) in one {
            let at = self.shard_of(hash);
            self.shards[at].insert(hash, seq);
        }
    }

    /// Forget `operation_id` (its entry is being pruned; the slot is still in `slots`).
    pub(crate) fn remove(&mut self, operation_id: &str, slots: &Slots) {
        let hash = self.hash(operation_id);
        let at = self.shard_of(hash);
        let shard = &mut self.shards[at];
        match shard.get(&hash) {
            Some(&seq) if committed_id(slots, seq) == Some(operation_id) => {
                shard.remove(&hash);
            }
            _ => {
                self.collided.remove(operation_id);
            }
        }
    }

    fn hash(&self, operation_id: &str) -> u64 {
        #[cfg(test)]
        if self.all_collide {
            return 42;
        }
        self.hasher.hash_one(operation_id)
    }

    fn shard(&self, hash: u64) -> &Shard {
        &self.shards[self.shard_of(hash)]
    }

    fn shard_of(&self, hash: u64) -> usize {
        shard_bits(hash) & (self.shards.len() - 1)
    }
}

fn shard_bits(hash: u64) -> usize {
    // Bits 48..56 pick the shard. The map inside uses the low bits for the bucket and the
    // top seven as the tag it filters a probe with: were the shard picked by the top bits,
    // every key of a shard would carry the same tag and each probe would compare every
    // key in its group (one more cache miss per commit).
    (hash >> 48) as usize % SHARDS
}

/// The operation id committed at `seq`, if that slot is committed.
fn committed_id(slots: &Slots, seq: u64) -> Option<&str> {
    slots.get(seq)?.committed_operation_id()
}

/// A hasher for keys that are already hashes: it passes the key through.
#[derive(Default)]
pub(crate) struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; fold anything else in rather than panic.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot::{Content, Labels, Slot, test_lease};
    use seqlease_core::{OperationBody, Timestamp};

    fn committed_slot(seq: u64, operation_id: &str) -> Slot {
        let body = OperationBody::new("k", vec![]);
        let content = Content::committed(body, &mut Labels::default());
        Slot::resolved(test_lease(seq, operation_id), Timestamp(1), content)
    }

    #[test]
    fn ids_that_share_a_hash_are_told_apart() {
        let mut slots = Slots::default();
        let mut index = CommittedIndex {
            all_collide: true,
            ..CommittedIndex::default()
        };
        for (seq, id) in [(1, "a"), (2, "b"), (3, "c")] {
            assert_eq!(index.get(id, &slots), None);
            index.insert(id, seq);
            slots.push(committed_slot(seq, id));
        }
        assert_eq!(
            ["a", "b", "c", "d"].map(|id| index.get(id, &slots)),
            [Some(1), Some(2), Some(3), None]
        );
        // Removing the id that holds the hash leaves the others found; a new id takes the
        // freed hash.
        index.remove("a", &slots);
        assert_eq!(index.get("a", &slots), None);
        assert_eq!(index.get("c", &slots), Some(3));
        index.insert("d", 4);
        slots.push(committed_slot(4, "d"));
        index.remove("b", &slots);
        assert_eq!(
            ["a", "b", "c", "d"].map(|id| index.get(id, &slots)),
            [None, None, Some(3), Some(4)]
        );
    }

    #[test]
    fn the_shard_leaves_the_tag_bits_free() {
        // The keys of one shard must not share their top bits (the inner map's tag).
        let hasher = foldhash::fast::RandomState::default();
        let tags: std::collections::HashSet<u64> = (0..10_000)
            .map(|i| hasher.hash_one(format!("op-{i}")))
            .filter(|&h| shard_bits(h) == 0)
            .map(|h| h >> 57)
            .collect();
        assert!(tags.len() > 8, "one shard's keys carry {} tags", tags.len());
    }

    #[test]
    fn every_id_is_found_after_the_split_into_shards() {
        let mut slots = Slots::default();
        let mut index = CommittedIndex::default();
        let ids = SPLIT_AT + 1_000;
        for seq in 1..=ids as u64 {
            let id = format!("op-{seq}");
            index.insert(&id, seq);
            slots.push(committed_slot(seq, &id));
            if seq == SPLIT_AT as u64 - 1 {
                assert_eq!(index.shards.len(), 1, "one map below the split");
            }
        }
        assert_eq!(index.shards.len(), SHARDS);
        assert_eq!(index.shards.iter().map(HashMap::len).sum::<usize>(), ids);
        for seq in (1..=ids as u64).step_by(7) {
            assert_eq!(index.get(&format!("op-{seq}"), &slots), Some(seq));
        }
        assert_eq!(index.get("op-0", &slots), None);
        index.remove("op-7", &slots);
        assert_eq!(index.get("op-7", &slots), None);
    }

    #[test]
    fn a_slot_that_is_not_committed_confirms_nothing() {
        let mut slots = Slots::default();
        slots.push(Slot::leased(test_lease(1, "a")));
        let mut index = CommittedIndex::default();
        index.insert("a", 1);
        assert_eq!(index.get("a", &slots), None);
    }
}

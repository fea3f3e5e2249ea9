//! Classifying the keys of flat payloads once per request instead of once per rule.
//!
//! A GA4 hit has ~60 fields and a route has a handful of rules, each naming fields by exact key
//! or glob. Matching every field against every rule's selectors made key comparison a fifth of
//! the rule engine's cost. At load, a route's [`Program`](super::Program) gives each flat
//! selector a bit and builds a [`KeyIndex`]; the first time a rule looks at a field, its key
//! is matched against all the patterns at once and the resulting bit set is kept on the field
//! ([`Entry::class`]). Every later rule only tests its own bits.
//!
//! Invariant: bits mean something only for the program that assigned them, and a document is
//! run by exactly one program. Selectors outside a program (conditions, `tagway test`
//! expectations) have no bit and are matched directly, as before.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use super::select::{KeyPat, Selector};
use crate::decode::Entry;

/// Set on every classified [`Entry::class`], so that 0 means "not classified yet" (new or
/// renamed entries).
pub const CLASSIFIED: u64 = 1 << 63;

/// The most selectors one program indexes; any more are matched directly.
const MAX_BITS: u32 = 63;

/// All the flat key patterns of one program, each with the bits of the selectors that use it.
///
/// Patterns are bucketed so that a key is compared only with patterns that could match it:
/// exact keys by a hash of their length and first and last bytes, globs by their first byte
/// (globs that start with `*` are tried on every key).
#[derive(Debug, Clone, Default)]
pub struct KeyIndex {
    exact: Vec<Vec<(Box<[u8]>, u64)>>,
    globs: Vec<Vec<(KeyPat, u64)>>,
    wild: Vec<(KeyPat, u64)>,
    /// Every pattern with its bit, so that selectors naming the same key share one.
    patterns: Vec<(KeyPat, u64)>,
    /// Tells this index's entries apart in the per-thread memo of classified keys.
    id: u32,
}

const BUCKETS: usize = 256;

#[inline(always)]
fn exact_bucket(k: &[u8]) -> usize {
    match (k.first(), k.last()) {
        (Some(&a), Some(&z)) => (a as usize * 7 + z as usize * 3 + k.len() * 13) % BUCKETS,
        _ => 0,
    }
}

impl KeyIndex {
    /// An index with nothing in it: classification finds no bits, and callers outside a
    /// program pass it.
    pub const EMPTY: KeyIndex = KeyIndex {
        exact: Vec::new(),
        globs: Vec::new(),
        wild: Vec::new(),
        patterns: Vec::new(),
        id: 0,
    };

    /// Gives `sel` a bit for its flat pattern (shared with any selector of the same pattern).
    /// Selectors beyond the 63rd distinct pattern keep no bit and are matched directly.
    pub fn add(&mut self, sel: &mut Selector) {
        if let Some((_, bit)) = self.patterns.iter().find(|(p, _)| *p == sel.flat) {
            sel.bit = *bit;
            return;
        }
        if self.patterns.len() as u32 >= MAX_BITS {
            sel.bit = 0;
            return;
        }
        let bit = 1u64 << self.patterns.len();
        if self.exact.is_empty() {
            static NEXT_ID: AtomicU32 = AtomicU32::new(1);
            self.id = NEXT_ID.fetch_add(1, Relaxed);
            self.exact = vec![Vec::new(); BUCKETS];
            self.globs = vec![Vec::new(); BUCKETS];
        }
        match &sel.flat {
            KeyPat::Exact(e) => {
                self.exact[exact_bucket(e.as_bytes())].push((e.as_bytes().into(), bit))
            }
            KeyPat::Glob(g) => match g.lead().first() {
                Some(&b) => self.globs[b as usize].push((sel.flat.clone(), bit)),
                None => self.wild.push((sel.flat.clone(), bit)),
            },
        }
        self.patterns.push((sel.flat.clone(), bit));
        sel.bit = bit;
    }

    /// The bits of every pattern `key` matches, with [`CLASSIFIED`]. Tags send the same few
    /// dozen keys on every hit, so results are remembered per thread ([`Memo`]).
    pub fn classify(&self, key: &str) -> u64 {
        if self.id == 0 {
            return CLASSIFIED;
        }
        MEMO.with_borrow_mut(|m| m.get_or(self.id, key.as_bytes(), || self.match_all(key)))
    }

    /// Classifies every entry of a flat part that is not classified yet, with one look-up of
    /// the per-thread memo for all of them.
    pub fn classify_all(&self, entries: &mut [Entry<'_>]) {
        if self.id == 0 {
            return;
        }
        MEMO.with_borrow_mut(|m| {
            for e in entries.iter_mut().filter(|e| e.class == 0) {
                e.class = m.get_or(self.id, e.key.as_bytes(), || self.match_all(&e.key));
            }
        })
    }

    /// [`KeyIndex::classify`] without the memo.
    fn match_all(&self, key: &str) -> u64 {
        let k = key.as_bytes();
        let mut bits = CLASSIFIED;
        if self.exact.is_empty() {
            return bits;
        }
        for (e, bit) in &self.exact[exact_bucket(k)] {
            if **e == *k {
                bits |= bit;
            }
        }
        if let Some(&b) = k.first() {
            for (g, bit) in &self.globs[b as usize] {
                if g.matches(key) {
                    bits |= bit;
                }
            }
        }
        for (g, bit) in &self.wild {
            if g.matches(key) {
                bits |= bit;
            }
        }
        bits
    }

    /// The entry's bits, classifying it on first use.
    #[inline]
    pub fn class_of(&self, e: &mut Entry<'_>) -> u64 {
        if e.class == 0 {
            e.class = self.classify(&e.key);
        }
        e.class
    }
}

/// A two-way set-associative cache of classified keys, one per worker thread: a fixed size (an attacker
/// sending random keys only evicts), no locks. Keys longer than [`MEMO_KEY`] bytes are not
/// remembered. Keys are held as zero-padded words, so a look-up is a few word compares.
struct Memo {
    slots: Box<[MemoSlot]>,
}

const MEMO_SLOTS: usize = 1024;
const MEMO_WORDS: usize = 4;
const MEMO_KEY: usize = MEMO_WORDS * 8;

#[derive(Clone, Copy)]
struct MemoSlot {
    index: u32,
    len: u32,
    key: [u64; MEMO_WORDS],
    class: u64,
}

thread_local! {
    static MEMO: std::cell::RefCell<Memo> = std::cell::RefCell::new(Memo {
        slots: vec![MemoSlot { index: 0, len: 0, key: [0; MEMO_WORDS], class: 0 }; MEMO_SLOTS]
            .into_boxed_slice(),
    });
}

impl Memo {
    fn get_or(&mut self, index: u32, key: &[u8], classify: impl FnOnce() -> u64) -> u64 {
        if key.len() > MEMO_KEY {
            return classify();
        }
        let words = words(key);
        // Two ways per set: the few dozen keys of a payload collide in pairs now and then, and
        // a direct-mapped pair would evict each other on every request.
        let set = hash(index, key.len(), &words) % (MEMO_SLOTS / 2) * 2;
        let hit = |s: &MemoSlot| s.index == index && s.len as usize == key.len() && s.key == words;
        for slot in &self.slots[set..set + 2] {
            if hit(slot) {
                return slot.class;
            }
        }
        let class = classify();
        self.slots[set + 1] = self.slots[set];
        self.slots[set] = MemoSlot {
            index,
            len: key.len() as u32,
            key: words,
            class,
        };
        class
    }
}

/// `key` (at most [`MEMO_KEY`] bytes) as little-endian words, zero-padded.
#[inline]
fn words(key: &[u8]) -> [u64; MEMO_WORDS] {
    let mut w = [0u64; MEMO_WORDS];
    let mut chunks = key.chunks_exact(8);
    for (slot, c) in w.iter_mut().zip(&mut chunks) {
        *slot = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
    }
    let mut tail = 0u64;
    for (j, &c) in chunks.remainder().iter().enumerate() {
        tail |= (c as u64) << (8 * j);
    }
    if let Some(slot) = w.get_mut(key.len() / 8) {
        *slot = tail;
    }
    w
}

/// FxHash-style mixing of the index id, the length and the key's words.
#[inline]
fn hash(index: u32, len: usize, words: &[u64; MEMO_WORDS]) -> usize {
    const K: u64 = 0xf135_7aea_2e62_a9c5;
    let mut h = (index as u64).wrapping_mul(K) ^ len as u64;
    for &w in &words[..len.div_ceil(8).max(1)] {
        h = (h ^ w).wrapping_mul(K).rotate_left(26);
    }
    (h >> 32) as usize
}

/// The selectors of one call, split into indexed bits and directly matched ones.
pub(super) struct Plan {
    /// Bits of the indexed selectors that apply.
    pub mask: u64,
    /// First bytes of the selectors matched directly (no bit).
    pub direct: super::select::ByteSet,
}

impl Plan {
    pub fn new(sels: &[Selector], in_body: bool) -> Plan {
        let mut plan = Plan {
            mask: 0,
            direct: Default::default(),
        };
        for s in sels.iter().filter(|s| s.applies(in_body)) {
            if s.bit != 0 {
                plan.mask |= s.bit;
            } else {
                plan.direct = plan.direct.union(s.first);
            }
        }
        plan
    }
}

/// Whether selector `s` matches the whole key of an entry whose bits are `class`.
#[inline]
pub(super) fn flat_hit(s: &Selector, class: u64, key: &str) -> bool {
    if s.bit != 0 {
        class & s.bit != 0
    } else {
        s.first.admits(key) && s.flat.matches(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(t: &str) -> Selector {
        Selector::parse(t).unwrap()
    }

    #[test]
    fn shared_patterns_share_a_bit_and_classify_finds_every_match() {
        let mut idx = KeyIndex::default();
        let (mut a, mut b, mut c, mut d) = (sel("uid"), sel("ep.*email*"), sel("uid"), sel("ep.*"));
        for s in [&mut a, &mut b, &mut c, &mut d] {
            idx.add(s);
        }
        assert_eq!(a.bit, c.bit);
        assert_ne!(a.bit, b.bit);
        let cls = idx.classify("ep.customer_email");
        assert!(cls & CLASSIFIED != 0);
        assert!(cls & b.bit != 0 && cls & d.bit != 0 && cls & a.bit == 0);
        assert_eq!(idx.classify("uid") & !CLASSIFIED, a.bit);
        assert_eq!(idx.classify("ui") & !CLASSIFIED, 0);
        // Again, from the memo; and another index with other patterns is not confused by it.
        assert_eq!(idx.classify("uid") & !CLASSIFIED, a.bit);
        let mut other = KeyIndex::default();
        let mut e = sel("ep.x");
        other.add(&mut e);
        assert_eq!(other.classify("uid") & !CLASSIFIED, 0);
        assert_eq!(other.classify("ep.x") & !CLASSIFIED, e.bit);
        let long = "ep.a_very_long_parameter_name_with_email_in_it";
        assert!(idx.classify(long) & b.bit != 0);
    }

    #[test]
    fn beyond_63_patterns_selectors_are_matched_directly() {
        let mut idx = KeyIndex::default();
        let mut sels: Vec<Selector> = (0..70).map(|i| sel(&format!("k{i}"))).collect();
        for s in &mut sels {
            idx.add(s);
        }
        assert!(sels[..63].iter().all(|s| s.bit != 0));
        assert!(sels[63..].iter().all(|s| s.bit == 0));
        assert!(flat_hit(&sels[69], CLASSIFIED, "k69"));
        assert!(!flat_hit(&sels[69], CLASSIFIED, "k68"));
    }
}

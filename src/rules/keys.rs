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
use crate::decode::{Entry, Hot};

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
    /// The keys' first two bytes that some pattern can match, hashed into 1024 bits: a key
    /// outside it matches nothing and is classified without the memo (about half of a GA4
    /// hit's keys). Empty: every key may match (a glob that starts with `*`).
    prefixes: Vec<u64>,
    /// Bits no walk over a part's hot fields looks for (those only the scan's exempt list
    /// uses, which the scan reads off every field's bits): fields with only these are not hot.
    unwalked: u64,
}

const BUCKETS: usize = 256;

/// The bit of [`KeyIndex::prefixes`] for a key starting with `a`, `b` (0 past its end).
#[inline(always)]
fn prefix_bit(a: u8, b: u8) -> usize {
    (a as usize * 37 + b as usize) & 1023
}

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
        prefixes: Vec::new(),
        unwalked: 0,
    };

    /// Leaves out of [`Hot`] the fields whose only bits are in `bits`: the program's walks over
    /// hot fields look for none of them.
    pub(super) fn unwalked(&mut self, bits: u64) {
        self.unwalked = bits & !CLASSIFIED;
    }

    /// Whether a classified entry can be matched by a selector that the walks over hot fields
    /// look for: it has such a bit, or it is not classified yet (added or renamed).
    #[inline(always)]
    fn is_hot(&self, e: &Entry<'_>) -> bool {
        e.class & !self.unwalked != CLASSIFIED
    }

    /// The entries of a flat part a walk can match ([`Hot`]), once [`KeyIndex::classify_all`]
    /// has classified them.
    pub fn hot(&self, entries: &[Entry<'_>]) -> Hot {
        Hot::of(entries, |e| self.is_hot(e))
    }

    /// Whether `hot` holds every entry that [`KeyIndex::hot`] would pick now (the invariant
    /// the rules keep as they add, remove and rename fields; checked in debug builds).
    pub fn hot_holds(&self, hot: Hot, entries: &[Entry<'_>]) -> bool {
        match (hot.bits(), self.hot(entries).bits()) {
            (Some(have), Some(need)) => need & !have == 0,
            (Some(_), None) => false,
            (None, _) => true,
        }
    }

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
            self.prefixes = vec![0; 16];
        }
        let lead = match &sel.flat {
            KeyPat::Exact(e) => e.as_bytes(),
            KeyPat::Glob(g) => g.lead(),
        };
        let mut mark = |a: u8, b: u8| {
            let bit = prefix_bit(a, b);
            if let Some(w) = self.prefixes.get_mut(bit / 64) {
                *w |= 1 << (bit % 64);
            }
        };
        match (lead, &sel.flat) {
            ([a, b, ..], _) => mark(*a, *b),
            ([a], KeyPat::Exact(_)) => mark(*a, 0),
            ([a], KeyPat::Glob(_)) => (0..=255).for_each(|b| mark(*a, b)),
            ([], _) => self.prefixes.fill(u64::MAX),
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
        if self.id == 0 || !self.may_match(key.as_bytes()) {
            return CLASSIFIED;
        }
        MEMO.with_borrow_mut(|m| m.get_or(self.id, key.as_bytes(), || self.match_all(key)))
    }

    /// Classifies every entry of a flat part that is not classified yet, with one look-up of
    /// the per-thread memo for all of them; the entries a selector can match ([`hot`]).
    pub fn classify_all(&self, entries: &mut [Entry<'_>]) -> Hot {
        if self.id == 0 {
            return Hot::ALL;
        }
        let mut bits = 0u64;
        MEMO.with_borrow_mut(|m| {
            for (i, e) in entries.iter_mut().enumerate() {
                if e.class == 0 {
                    e.class = if self.may_match(e.key.as_bytes()) {
                        m.get_or(self.id, e.key.as_bytes(), || self.match_all(&e.key))
                    } else {
                        CLASSIFIED
                    };
                }
                // (Wrapping past 64 entries, where the bits are not used.)
                bits |= (self.is_hot(e) as u64) << (i % 64);
            }
        });
        Hot::of_bits(bits, entries.len())
    }

    /// Whether some pattern could match `key`, by its first two bytes.
    #[inline(always)]
    fn may_match(&self, key: &[u8]) -> bool {
        let (a, b) = match key {
            [] => return true,
            [a] => (*a, 0),
            [a, b, ..] => (*a, *b),
        };
        let bit = prefix_bit(a, b);
        self.prefixes
            .get(bit / 64)
            .is_none_or(|w| w & 1 << (bit % 64) != 0)
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

    /// The entry's bits, classifying it on first use (rare after [`KeyIndex::classify_all`]:
    /// out of line, so the loops over entries that ask stay small enough to inline).
    #[inline(always)]
    pub fn class_of(&self, e: &mut Entry<'_>) -> u64 {
        if e.class == 0 {
            self.classify_late(e);
        }
        e.class
    }

    #[cold]
    #[inline(never)]
    fn classify_late(&self, e: &mut Entry<'_>) {
        e.class = self.classify(&e.key);
    }
}

/// A two-way set-associative cache of classified keys, one per worker thread: a fixed size (an
/// attacker sending random keys only evicts), no locks. Keys longer than [`MEMO_KEY`] bytes are
/// not remembered.
///
/// A key is held as up to three words read straight from its bytes ([`words`]), overlapping
/// where it is shorter than the words, which together with its length determine it exactly:
/// a look-up is a few loads and compares, with nothing copied into a buffer first.
struct Memo {
    slots: Box<[MemoSlot]>,
}

const MEMO_SETS: usize = 256;
const MEMO_KEY: usize = 24;

#[derive(Clone, Copy)]
struct MemoSlot {
    index: u32,
    len: u32,
    key: [u64; 3],
    class: u64,
}

thread_local! {
    static MEMO: std::cell::RefCell<Memo> = std::cell::RefCell::new(Memo {
        slots: vec![MemoSlot { index: 0, len: 0, key: [0; 3], class: 0 }; 2 * MEMO_SETS]
            .into_boxed_slice(),
    });
}

impl Memo {
    #[inline]
    fn get_or(&mut self, index: u32, key: &[u8], classify: impl FnOnce() -> u64) -> u64 {
        let Some(words) = words(key) else {
            return classify();
        };
        // Two ways per set: the few dozen keys of a payload collide in pairs now and then, and
        // a direct-mapped pair would evict each other on every request.
        let set = hash(index, key.len(), &words) * 2;
        // Word by word: comparing the arrays whole loaded the words back from the stack in
        // wider loads than they were stored with (a store-forwarding stall per key).
        let [w0, w1, w2] = words;
        let hit = |s: &MemoSlot| {
            s.index == index
                && s.len as usize == key.len()
                && s.key[0] == w0
                && s.key[1] == w1
                && s.key[2] == w2
        };
        let Some(ways) = self.slots.get_mut(set..set + 2) else {
            return classify();
        };
        if hit(&ways[0]) {
            return ways[0].class;
        }
        if hit(&ways[1]) {
            return ways[1].class;
        }
        let class = classify();
        ways[1] = ways[0];
        ways[0] = MemoSlot {
            index,
            len: key.len() as u32,
            key: words,
            class,
        };
        class
    }
}

/// A key of at most [`MEMO_KEY`] bytes as three words that, with its length, determine it:
/// its first and last bytes (or 4-byte or 8-byte windows, overlapping for short keys), and
/// for keys over 16 bytes the 8 bytes after the first 8.
#[inline(always)]
fn words(k: &[u8]) -> Option<[u64; 3]> {
    let w8 = |c: Option<&[u8; 8]>| c.map_or(0, |c| u64::from_le_bytes(*c));
    let w4 = |c: Option<&[u8; 4]>| c.map_or(0, |c| u32::from_le_bytes(*c) as u64);
    Some(match k.len() {
        0 => [0; 3],
        1..=3 => {
            let (a, m, z) = (k[0], k[k.len() / 2], k[k.len() - 1]);
            [a as u64 | (m as u64) << 8 | (z as u64) << 16, 0, 0]
        }
        4..=8 => [w4(k.first_chunk()) | w4(k.last_chunk()) << 32, 0, 0],
        9..=16 => [w8(k.first_chunk()), w8(k.last_chunk()), 0],
        17..=MEMO_KEY => [
            w8(k.first_chunk()),
            w8(k.get(8..16).and_then(|c| c.first_chunk())),
            w8(k.last_chunk()),
        ],
        _ => return None,
    })
}

/// The set of a key: its words, length and index id mixed (FxHash-style) into 8 bits.
#[inline(always)]
fn hash(index: u32, len: usize, w: &[u64; 3]) -> usize {
    const K: u64 = 0xf135_7aea_2e62_a9c5;
    let h = w[0] ^ w[1].rotate_left(21) ^ w[2].rotate_left(42) ^ (len as u64) << 56;
    ((h ^ index as u64).wrapping_mul(K) >> 56) as usize % MEMO_SETS
}

/// The selectors of one call, split into indexed bits and directly matched ones.
pub(super) struct Plan {
    /// Bits of the indexed selectors that apply.
    pub mask: u64,
    /// First bytes of the selectors matched directly (no bit).
    pub direct: super::select::ByteSet,
    /// Whether some selector that applies has no bit (so `direct` means anything).
    pub any_direct: bool,
    /// Whether a selector that applies reaches into nested documents.
    pub nested: bool,
}

impl Plan {
    pub fn new(sels: &[Selector], in_body: bool) -> Plan {
        let mut plan = Plan {
            mask: 0,
            direct: Default::default(),
            any_direct: false,
            nested: false,
        };
        for s in sels.iter().filter(|s| s.applies(in_body)) {
            plan.nested |= !s.nested.is_empty();
            if s.bit != 0 {
                plan.mask |= s.bit;
            } else {
                plan.direct = plan.direct.union(s.first);
                plan.any_direct = true;
            }
        }
        plan
    }
}

impl Plan {
    /// A plan of indexed selectors only, whose bits are `mask`.
    pub fn bits(mask: u64) -> Plan {
        Plan {
            mask,
            direct: Default::default(),
            any_direct: false,
            nested: false,
        }
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

    proptest::proptest! {
        /// The prefix filter and the memo only save work: a key gets the bits matching every
        /// pattern directly gives it.
        #[test]
        fn classification_is_direct_matching(key in "[a-e_.]{0,6}") {
            for extra in ["dd", "*d"] {
                let mut idx = KeyIndex::default();
                for p in ["a", "ab", "b*", "c.*d*", "e", "ea*", extra] {
                    idx.add(&mut sel(p));
                }
                proptest::prop_assert_eq!(idx.classify(&key), idx.match_all(&key));
            }
        }

        /// A memo key's words and length determine it: two keys of one length share their
        /// words only when they are the same key.
        #[test]
        fn memo_words_tell_keys_apart(a in "[a-c_.]{0,26}", b in "[a-c_.]{0,26}") {
            let (wa, wb) = (words(a.as_bytes()), words(b.as_bytes()));
            if a.len() == b.len() && a.len() <= MEMO_KEY {
                proptest::prop_assert_eq!(wa == wb, a == b);
            }
            proptest::prop_assert_eq!(wa.is_some(), a.len() <= MEMO_KEY);
        }
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

//! Personal-data detectors: the default-on scan over every string value a tag sends (page URLs,
//! event properties, user ids) and explicit `redact` rules both ask this module what in a
//! string is an email, a phone number, a payment card, an IBAN, an IP address, a JWT, a bearer
//! token or a secret URL parameter.
//!
//! Precision over recall. The scan runs over every value of every beacon, so a false positive
//! silently corrupts analytics data (a timestamp, a client id or a browser version replaced by
//! a placeholder), while a miss is mitigated by explicit rules. So every detector demands
//! structure, not just characters: separators in a phone number's pattern, a brand prefix and
//! a Luhn check for cards, mod-97 and the country's length for IBANs, octet ranges for IPs,
//! and no detector matches inside a longer digit run or alphanumeric token.
//!
//! Secret URL parameters whose value is already a bracketed placeholder (`[email]`,
//! `%5Bemail%5D`) are not reported again, so redacting with such placeholders is idempotent.
//!
//! Cost: one table-driven pass over the bytes records which trigger characters occur and counts
//! digits, dots and colons; a detector runs only when its trigger is present (a short value
//! without one costs that pass and a few comparisons). The detectors anchored at a token start
//! (phone, card, IBAN, IPv4, JWT) share one further pass that skips whole tokens. Nothing
//! allocates unless something is found.

use std::cmp::Reverse;
use std::net::Ipv6Addr;

use crate::decode::query::{escape_at, url_separators};

mod census;

/// A kind of personal data or secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Email,
    Phone,
    Card,
    Iban,
    Ip,
    Jwt,
    Bearer,
    UrlSecret,
}

impl Kind {
    /// Every kind, in precedence order (on identical spans the earlier kind is reported).
    pub const ALL: [Kind; 8] = [
        Kind::Email,
        Kind::Phone,
        Kind::Card,
        Kind::Iban,
        Kind::Ip,
        Kind::Jwt,
        Kind::Bearer,
        Kind::UrlSecret,
    ];

    /// The name used in rule files and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Email => "email",
            Kind::Phone => "phone",
            Kind::Card => "card",
            Kind::Iban => "iban",
            Kind::Ip => "ip",
            Kind::Jwt => "jwt",
            Kind::Bearer => "bearer",
            Kind::UrlSecret => "url_secret",
        }
    }

    /// The kind with this [`name`](Kind::name).
    pub fn from_name(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    const fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// A set of kinds, with the [`arm`] bits that belong to them: a route's set is made once, at
/// load, and read for every value the scan checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Kinds {
    set: u16,
    arm: u16,
}

impl Kinds {
    const fn of(set: u16) -> Kinds {
        Kinds {
            set,
            arm: arm_bits(set),
        }
    }
    /// Every kind.
    pub const fn all() -> Kinds {
        Kinds::of((1 << Kind::ALL.len()) - 1)
    }
    /// No kind.
    pub const fn none() -> Kinds {
        Kinds::of(0)
    }
    /// This set plus `k`.
    pub const fn with(self, k: Kind) -> Kinds {
        Kinds::of(self.set | k.bit())
    }
    /// Whether `k` is in the set.
    pub const fn contains(self, k: Kind) -> bool {
        self.set & k.bit() != 0
    }
    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.set == 0
    }

    /// The bits of [`arm`] that belong to kinds in the set.
    #[inline(always)]
    const fn arm_mask(self) -> u16 {
        self.arm
    }
}

/// The bits of [`arm`] that belong to the kinds of `set`.
const fn arm_bits(set: u16) -> u16 {
    const fn bit(set: u16, k: Kind) -> u16 {
        (set & k.bit() != 0) as u16
    }
    let ip = bit(set, Kind::Ip);
    (bit(set, Kind::Phone) * 0b11)
        | bit(set, Kind::Card) << 2
        | bit(set, Kind::Iban) << 3
        | ip << 4
        | bit(set, Kind::Jwt) << 5
        | bit(set, Kind::Email) << 6
        | ip << 7
        | bit(set, Kind::Bearer) << 8
        | bit(set, Kind::UrlSecret) << 9
}

/// One detected span: byte offsets into the text, on char boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
}

/// Appends non-overlapping findings sorted by start (on overlap keep the earlier/longer one;
/// on identical spans the kind earlier in [`Kind::ALL`]).
pub fn find(text: &str, kinds: Kinds, out: &mut Vec<Finding>) {
    let base = out.len();
    if run(text.as_bytes(), kinds, out, false) {
        resolve(out, base);
    }
}

/// Whether anything would be found (stops at the first detector that finds something).
pub fn any(text: &str, kinds: Kinds) -> bool {
    run(text.as_bytes(), kinds, &mut Vec::new(), true)
}

/// Replaces every finding with `replace(kind, matched_text)`; `None` when nothing was found
/// (so callers can keep the original string untouched).
pub fn redact(
    text: &str,
    kinds: Kinds,
    replace: &mut dyn FnMut(Kind, &str) -> String,
) -> Option<String> {
    redact_triggered(text, triggers(text, kinds), replace)
}

/// [`redact`] with the [`triggers`] of `text` already known.
pub fn redact_triggered(
    text: &str,
    triggers: Triggers,
    replace: &mut dyn FnMut(Kind, &str) -> String,
) -> Option<String> {
    let mut found = Vec::new();
    if run_armed(text.as_bytes(), triggers.0, &mut found, false) {
        resolve(&mut found, 0);
    }
    if found.is_empty() {
        return None;
    }
    let mut s = String::with_capacity(text.len());
    let mut at = 0;
    for f in &found {
        s.push_str(&text[at..f.start]);
        s.push_str(&replace(f.kind, &text[f.start..f.end]));
        at = f.end;
    }
    s.push_str(&text[at..]);
    Some(s)
}

// ---------------------------------------------------------------------------------------------
// Pre-pass and dispatch

// Pre-pass classes. The low 48 bits count digits, dots and colons (16 bits each), the high 16
// bits are flags; one table lookup per byte feeds both.
const DIGIT: u64 = 1;
const DOT: u64 = 1 << 16;
const COLON: u64 = 1 << 32;
const COUNTS: u64 = (1 << 48) - 1;
const AT: u64 = 1 << 48;
const PCT: u64 = 1 << 49;
const PLUS: u64 = 1 << 50;
const EQ: u64 = 1 << 51;
const QH: u64 = 1 << 52; // '?' or '#'
const UPPER: u64 = 1 << 53;
const LETTER_B: u64 = 1 << 54; // 'b' or 'B' (bearer)
const LETTER_J: u64 = 1 << 55; // 'J' (eyJ)
const SEP: u64 = 1 << 56; // '-' or '(' (phone groups)
const SPACE: u64 = 1 << 57;

static CLASS: [u64; 256] = classes();

const fn classes() -> [u64; 256] {
    let mut t = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = match i as u8 {
            b'0'..=b'9' => DIGIT,
            b'.' => DOT,
            b':' => COLON,
            b'@' => AT,
            b'%' => PCT,
            b'+' => PLUS,
            b'=' => EQ,
            b'?' | b'#' => QH,
            b' ' => SPACE,
            b'-' | b'(' => SEP,
            b'b' => LETTER_B,
            b'B' => UPPER | LETTER_B,
            b'J' => UPPER | LETTER_J,
            b'A'..=b'Z' => UPPER,
            _ => 0,
        };
        i += 1;
    }
    t
}

type Detector = fn(&[u8], &mut Vec<Finding>);
type At = fn(&[u8], usize) -> Option<usize>;

/// Detectors anchored at the start of a token ([`left_ok`]); they share one pass. Bit `k` of
/// `FIRST[c]` says whether byte `c` can start `ANCHORED[k]`.
const ANCHORED: [(Kind, At); 6] = [
    (Kind::Phone, phone_intl_at),     // `+`, `%2B`
    (Kind::Phone, phone_national_at), // `(`, digit
    (Kind::Card, card_at),            // digit
    (Kind::Iban, iban_at),            // A-Z
    (Kind::Ip, ipv4_at),              // digit
    (Kind::Jwt, jwt_at),              // `e`
];

static FIRST: [u8; 256] = firsts();

const fn firsts() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = match i as u8 {
            b'+' | b'%' => 1,
            b'(' => 2,
            b'0'..=b'9' => 2 | 4 | 16,
            b'A'..=b'Z' => 8,
            b'e' => 32,
            _ => 0,
        };
        i += 1;
    }
    t
}

/// Whether the detectors could find anything in `text`: `false` when the one table-driven
/// pass over its bytes shows that no detector's trigger occurs (most values of a beacon), so
/// callers that check every value can skip the rest.
#[inline]
pub fn may_find(text: &str, kinds: Kinds) -> bool {
    triggers(text, kinds).any()
}

/// Which of `kinds`' detectors the bytes of a text arm, from one pass over them: what
/// [`may_find`] decides from, kept so that [`redact_triggered`] does not look again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Triggers(u16);

impl Triggers {
    /// Whether any detector could find something.
    pub fn any(self) -> bool {
        self.0 != 0
    }
}

/// The [`Triggers`] of `text`.
#[inline]
pub fn triggers(text: &str, kinds: Kinds) -> Triggers {
    // The shortest thing any detector finds is three bytes long (`::1`); a beacon has many
    // one-character values (`v=2`, `_s=1`).
    if text.len() < 3 {
        return Triggers(0);
    }
    Triggers(arm(text.as_bytes(), kinds))
}

// Bits of [`arm`]'s result above the [`ANCHORED`] ones.
/// [`ANCHORED`]'s IBAN detector's bit.
const IBAN_BIT: u8 = 1 << 3;
const ARM_EMAIL: u16 = 1 << 6;
const ARM_IPV6: u16 = 1 << 7;
const ARM_BEARER: u16 = 1 << 8;
const ARM_URL_SECRET: u16 = 1 << 9;

/// The detectors `b` arms among `kinds`: bit `k` for [`ANCHORED`]`[k]`, then the `ARM_*` bits.
/// 0 when none can find anything.
#[inline]
fn arm(b: &[u8], kinds: Kinds) -> u16 {
    // Ids are the most common digit-heavy values (PostHog, Segment, Snowplow send several per
    // event); a whole value shaped like a UUID holds nothing the detectors look for.
    if is_uuid(b) {
        return 0;
    }
    let census::Census {
        flags,
        digits: d,
        dots,
        colons,
    } = census::census(b);
    let has = |m: u64| flags & m != 0;
    let n = b.len();
    // Every detector needs one of these (the digit counts are the fewest any digit-driven
    // detector below arms with); most values stop here.
    let marks = has(AT | PCT | QH | LETTER_J) | (colons >= 2) | (has(LETTER_B) & has(SPACE));
    let digits = (d >= 10) | ((d >= 8) & has(PLUS)) | ((d >= 4) & (dots >= 3));
    let iban = has(UPPER) & (d >= 2) & (n >= 15);
    if !(marks | digits | iban) {
        return 0;
    }
    // Bit k for ANCHORED[k], then the ARM_* bits; only the kinds asked for. (`&` and `|` on
    // booleans: no branch per condition.)
    let on = ((d >= 8) & has(PLUS | PCT)) as u16
        | (((d >= 10) & ((dots > 0) | has(SEP | SPACE | PCT))) as u16) << 1
        | ((d >= 13) as u16) << 2
        | (iban as u16) << 3
        | (((d >= 4) & (dots >= 3)) as u16) << 4
        | ((has(LETTER_J) & (dots >= 2) & (n >= 16)) as u16) << 5
        | (((dots > 0) & has(AT | PCT) & (n >= 6)) as u16) << 6
        | ((colons >= 2) as u16) << 7
        | ((has(LETTER_B) & has(SPACE | PCT) & (n >= 27)) as u16) << 8
        | ((has(QH | PCT) & has(EQ | PCT)) as u16) << 9;
    let on = on & kinds.arm_mask();
    if on & (NATIONAL_BIT | CARD_BIT) == 0 {
        on
    } else if n <= 64 && !has(PCT) {
        digit_runs_by_mask(b, on)
    } else {
        digit_runs(b, on)
    }
}

/// [`ANCHORED`]'s national phone number and card detectors' bits.
const NATIONAL_BIT: u16 = 1 << 1;
const CARD_BIT: u16 = 1 << 2;

/// What a national phone number or card match starting at `s`, in a run of digits of `b`
/// that ends at `j`, could be: [`NATIONAL_BIT`] and [`CARD_BIT`] when the run has the shape
/// that detector starts with.
#[inline(always)]
fn run_starts(b: &[u8], s: usize, j: usize) -> u16 {
    let (len, first, next) = (j - s, b[s], b.get(j).copied());
    let sep = matches!(next, Some(b' ' | b'-' | b'.' | b'%'));
    // (A number after a trunk `1` has such an area code too.)
    let national = len == 3 && first >= b'2' && (sep || next == Some(b')'));
    let card = matches!(first, b'2'..=b'6')
        && ((13..=19).contains(&len) || (len == 4 && matches!(next, Some(b' ' | b'-'))));
    (national as u16) << 1 | (card as u16) << 2
}

/// [`digit_runs`] for a text of at most 64 bytes without `%`, from its digits' bit mask: no
/// branch per byte (ids alternate digits and letters, which the byte loop mispredicted).
fn digit_runs_by_mask(b: &[u8], on: u16) -> u16 {
    let m = census::digit_mask(b);
    let starts = m & !(m << 1);
    // Only runs of the lengths a match starts with are looked at: 3 digits (an area code), 4
    // (a card's first group) or at least 13 (a card). `a13`: bit `k` when the 13 bytes from
    // `k` are digits.
    let (m1, m2, m3) = (m >> 1, m >> 2, m >> 3);
    let a2 = m & m1;
    let a4 = a2 & a2 >> 2;
    let a13 = a4 & a4 >> 4 & a4 >> 8 & a4 >> 9;
    let mut runs = 0;
    if on & NATIONAL_BIT != 0 {
        runs |= starts & m1 & m2 & !m3;
    }
    if on & CARD_BIT != 0 {
        runs |= starts & m1 & m2 & m3 & !(m >> 4) | starts & a13;
    }
    let mut found = 0;
    while runs != 0 {
        let s = runs.trailing_zeros();
        runs &= runs - 1;
        let len = (!(m >> s)).trailing_zeros();
        found |= run_starts(b, s as usize, (s + len) as usize);
    }
    on & (found | !(NATIONAL_BIT | CARD_BIT))
}

/// `on` without the national phone and card bits when no digit run of `b` can start a match.
///
/// Both detectors begin at, or one separator before, a run of digits of a given shape (an area
/// code of 3 from `2`, a card's 13 to 19 digits or first group of 4 from `2`–`6`), and the counts that
/// arm them are met by values that have none: GA4's `tag_exp`, `gtm`, `_p` and `cid` on every
/// hit. One pass over the runs costs less than the detectors' tries at each token. Exact for
/// what the detectors find (a test holds the findings to those without this): a match starts
/// where a run starts, or right after an `%XX` escape inside one (see [`left_ok`]).
fn digit_runs(b: &[u8], on: u16) -> u16 {
    let want = on & (NATIONAL_BIT | CARD_BIT);
    let mut found = 0;
    let starts = |s, j| run_starts(b, s, j);
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let j = i + digit_run(b, i);
        found |= starts(i, j);
        // (An escape ends at most two bytes into the run: its `%` is not a digit.)
        for k in (i + 1).max(3)..j.min(i + 3) {
            if b[k - 3] == b'%' && escape_at(b, k - 3).is_some() {
                found |= starts(k, j);
            }
        }
        if found & want == want {
            break;
        }
        i = j;
    }
    on & (found | !(NATIONAL_BIT | CARD_BIT))
}

/// Runs the detectors whose trigger occurs in `b`; whether any pushed a finding.
fn run(b: &[u8], kinds: Kinds, out: &mut Vec<Finding>, first_only: bool) -> bool {
    run_armed(b, arm(b, kinds), out, first_only)
}

/// [`run`] with the detectors [`arm`] gave.
fn run_armed(b: &[u8], armed: u16, out: &mut Vec<Finding>, first_only: bool) -> bool {
    if armed == 0 {
        return false;
    }
    let base = out.len();
    let mut mask = (armed & 0x3F) as u8;
    if mask & IBAN_BIT != 0 && !has_iban_head(b) {
        mask &= !IBAN_BIT;
    }
    if mask != 0 {
        anchored(b, mask, out);
    }
    let mut step = |bit: u16, detect: Detector| {
        if armed & bit != 0 && !(first_only && out.len() > base) {
            detect(b, out);
        }
    };
    step(ARM_EMAIL, email);
    step(ARM_IPV6, ipv6);
    step(ARM_BEARER, bearer);
    step(ARM_URL_SECRET, url_secret);
    out.len() > base
}

/// `8-4-4-4-12` hexadecimal digits.
fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// One pass for the [`ANCHORED`] detectors in `mask`: at each byte that can start one and may
/// start a match, tries them all and resumes after the longest match. After a failed try at a
/// token character the rest of the token is skipped: nothing can start inside it, except right
/// after a `%XX` escape that begins it.
fn anchored(b: &[u8], mask: u8, out: &mut Vec<Finding>) {
    let mut i = 0;
    while let Some(p) = b[i..].iter().position(|&c| FIRST[c as usize] & mask != 0) {
        let s = i + p;
        let mut end = 0;
        if left_ok(b, s) {
            let mut bits = FIRST[b[s] as usize] & mask;
            while bits != 0 {
                let (kind, at) = ANCHORED[bits.trailing_zeros() as usize];
                bits &= bits - 1;
                if let Some(e) = at(b, s) {
                    push(out, kind, s, e);
                    end = end.max(e);
                }
            }
        }
        i = if end > 0 {
            end
        } else if !is_word(b[s]) {
            s + 1
        } else if s > 0 && escape_at(b, s - 1).is_some() {
            s + 2
        } else {
            s + b[s..].iter().take_while(|&&c| is_word(c)).count()
        };
    }
}

/// Sorts `out[base..]` by start (longer first, then kind) and drops findings overlapping a kept one.
fn resolve(out: &mut Vec<Finding>, base: usize) {
    out[base..].sort_unstable_by_key(|f| (f.start, Reverse(f.end), f.kind as u8));
    let mut w = base;
    for r in base..out.len() {
        let f = out[r];
        if w > base && f.start < out[w - 1].end {
            continue;
        }
        out[w] = f;
        w += 1;
    }
    out.truncate(w);
}

fn push(out: &mut Vec<Finding>, kind: Kind, start: usize, end: usize) {
    out.push(Finding { kind, start, end });
}

/// Part of a token: ASCII alphanumeric, `_`, or any non-ASCII byte (conservatively).
#[inline(always)]
fn is_word(c: u8) -> bool {
    WORD[c as usize]
}

static WORD: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
        i += 1;
    }
    t
};

/// Whether `b` has a country code and check digits (`GB82`) anywhere: every IBAN starts so,
/// and a URL full of capitals and digits (click ids) rarely has one, so the IBAN detector's
/// pass over it is skipped.
///
/// This runs on whole page URLs: where the CPU has AVX-512, from masks of capitals and digits
/// 64 bytes at a time ([`census::vbmi::has_iban_head`]).
fn has_iban_head(b: &[u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if census::vbmi::available() {
            // SAFETY: the CPU has the features `has_iban_head` is compiled for (checked just
            // above).
            return unsafe { census::vbmi::has_iban_head(b) };
        }
    }
    has_iban_head_scalar(b)
}

/// [`has_iban_head`] without vector instructions. A head's two digits are neighbours, so every
/// other byte is read first, and the bytes around one only when it is a digit: half the reads
/// of trying every position.
fn has_iban_head_scalar(b: &[u8]) -> bool {
    let up = |i: usize| b[i].is_ascii_uppercase();
    let mut j = 3;
    while j + 1 < b.len() {
        if b[j].is_ascii_digit() {
            if b[j - 1].is_ascii_digit() && up(j - 2) && up(j - 3) {
                return true;
            }
            if b[j + 1].is_ascii_digit() && up(j - 1) && up(j - 2) {
                return true;
            }
        }
        j += 2;
    }
    // The last byte, when the loop stopped just before it.
    j + 1 == b.len() && b[j].is_ascii_digit() && b[j - 1].is_ascii_digit() && up(j - 2) && up(j - 3)
}

/// Whether a match may start at `i`: not inside a token, and not continuing a dotted or dashed
/// token (`v1.4111…`, `ORD-4111…`). A preceding `%XX` escape is a delimiter.
#[inline(always)]
fn left_ok(b: &[u8], i: usize) -> bool {
    let Some(&p) = i.checked_sub(1).map(|j| &b[j]) else {
        return true;
    };
    if is_word(p) {
        return i >= 3 && b[i - 3] == b'%' && escape_at(b, i - 3).is_some();
    }
    !(matches!(p, b'.' | b'-') && i >= 2 && is_word(b[i - 2]))
}

/// Whether a match may end at `j` (the mirror of [`left_ok`]).
fn right_ok(b: &[u8], j: usize) -> bool {
    match b.get(j) {
        None => true,
        Some(&c) => {
            !(is_word(c) || matches!(c, b'.' | b'-') && b.get(j + 1).is_some_and(|&n| is_word(n)))
        }
    }
}

fn digit_run(b: &[u8], i: usize) -> usize {
    b.get(i..)
        .map_or(0, |s| s.iter().take_while(|c| c.is_ascii_digit()).count())
}

// ---------------------------------------------------------------------------------------------
// Email

/// File extensions that are not TLDs: `logo@2x.png` is an asset, not an address.
#[rustfmt::skip]
const FILE_EXTS: [&str; 19] = [
    "png", "jpg", "jpeg", "gif", "svg", "webp", "avif", "ico", "bmp", "css", "js", "mjs", "map",
    "json", "xml", "html", "htm", "pdf", "txt",
];

/// `local@domain` or `local%40domain`.
fn email(b: &[u8], out: &mut Vec<Finding>) {
    let mut i = 0;
    while let Some(p) = b[i..].iter().position(|&c| c == b'@' || c == b'%') {
        let at = i + p;
        i = at + 1;
        let sep = match b[at] {
            b'@' => 1,
            _ if b.get(at + 1..at + 3) == Some(b"40") => 3,
            _ => continue,
        };
        if let Some(e) = domain_end(b, at + sep)
            && let Some(s) = local_start(b, at)
        {
            push(out, Kind::Email, s, e);
            i = e;
        }
    }
}

fn is_local(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-')
}

/// Start of the local part ending at `at`. A `%XX` escape belongs to it only when it encodes a
/// local-part character, so `…%3Fe%3Djane%40x.com` starts at `jane`.
fn local_start(b: &[u8], at: usize) -> Option<usize> {
    let mut j = at;
    while j > 0 {
        match (j >= 3 && b[j - 3] == b'%')
            .then(|| escape_at(b, j - 3))
            .flatten()
        {
            Some(c) if is_local(c) => j -= 3,
            Some(_) => break,
            None if is_local(b[j - 1]) => j -= 1,
            None => break,
        }
    }
    while j < at && b[j] == b'.' {
        j += 1;
    }
    let local = &b[j..at];
    (local.len() <= 64 && local.iter().any(u8::is_ascii_alphanumeric)).then_some(j)
}

/// End of a domain starting at `from`: 2+ labels, the last all letters (2+) and no file extension.
fn domain_end(b: &[u8], from: usize) -> Option<usize> {
    let len = b[from..]
        .iter()
        .take_while(|&&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.');
    let mut e = from + len.count();
    while e > from && matches!(b[e - 1], b'.' | b'-') {
        e -= 1;
    }
    let dom = &b[from..e];
    let label_ok =
        |l: &[u8]| !l.is_empty() && l.len() <= 63 && l[0] != b'-' && l[l.len() - 1] != b'-';
    if !dom.split(|&c| c == b'.').all(label_ok) {
        return None;
    }
    let tld = dom.rsplit(|&c| c == b'.').next()?;
    let is_ext = |x: &&str| x.as_bytes().eq_ignore_ascii_case(tld);
    let is_ext = tld.len() <= 4 && FILE_EXTS.iter().any(is_ext);
    let tld_ok = tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic) && !is_ext;
    (tld_ok && tld.len() < dom.len()).then_some(e)
}

// ---------------------------------------------------------------------------------------------
// Phone

/// `+` or `%2B`, then 8 to 15 digits in groups with single separators between them.
fn phone_intl_at(b: &[u8], i: usize) -> Option<usize> {
    match b[i] {
        b'+' => intl_end(b, i + 1),
        _ => escape_at(b, i)
            .filter(|&c| c == b'+')
            .and_then(|_| intl_end(b, i + 3)),
    }
}

fn intl_end(b: &[u8], mut j: usize) -> Option<usize> {
    let (mut digits, mut end) = (0, j);
    loop {
        let g = digit_run(b, j);
        if g == 0 {
            break;
        }
        digits += g;
        j += g;
        end = j;
        match phone_sep(b, j) {
            Some(k) if b.get(j + k).is_some_and(u8::is_ascii_digit) => j += k,
            _ => break,
        }
    }
    ((8..=15).contains(&digits) && right_ok(b, end)).then_some(end)
}

/// A separator between phone digit groups: at most one of space, `-`, `.`, `%20`, plus at most
/// one parenthesis (`+1 (555) 123…`).
fn phone_sep(b: &[u8], j: usize) -> Option<usize> {
    let (mut k, mut paren, mut plain) = (0, false, false);
    loop {
        match b.get(j + k) {
            Some(b'(' | b')') if !paren => (paren, k) = (true, k + 1),
            Some(b' ' | b'-' | b'.') if !plain => (plain, k) = (true, k + 1),
            Some(b'%') if !plain && b.get(j + k..j + k + 3) == Some(b"%20") => {
                (plain, k) = (true, k + 3)
            }
            _ => break,
        }
    }
    (k > 0).then_some(k)
}

/// `(555) 123-4567`, `555-123-4567`, `555.123.4567`, `555 123 4567`, optionally after `1` and
/// the same separator. The area code starts with 2-9 (NANP).
fn phone_national_at(b: &[u8], i: usize) -> Option<usize> {
    national_at(b, i, None).or_else(|| trunk_prefixed(b, i))
}

fn trunk_prefixed(b: &[u8], i: usize) -> Option<usize> {
    if b[i] != b'1' || digit_run(b, i) != 1 {
        return None;
    }
    let (k, sep) = plain_sep(b, i + 1)?;
    national_at(b, i + 1 + k, Some(sep))
}

fn national_at(b: &[u8], i: usize, want: Option<u8>) -> Option<usize> {
    let paren = b.get(i) == Some(&b'(');
    let mut j = i + paren as usize;
    if digit_run(b, j) != 3 || b[j] < b'2' {
        return None;
    }
    j += 3;
    let sep1 = if paren {
        if b.get(j) != Some(&b')') {
            return None;
        }
        j += 1;
        j += plain_sep(b, j).filter(|s| s.1 == b' ').map_or(0, |s| s.0);
        None
    } else {
        let (k, c) = plain_sep(b, j)?;
        j += k;
        Some(c)
    };
    if want.is_some() && !paren && want != sep1 {
        return None;
    }
    if digit_run(b, j) != 3 {
        return None;
    }
    j += 3;
    let (k, sep2) = plain_sep(b, j)?;
    if sep1.is_some_and(|s| s != sep2) || digit_run(b, j + k) != 4 {
        return None;
    }
    j += k + 4;
    right_ok(b, j).then_some(j)
}

/// Space (or `%20`, reported as a space), `-` or `.`: (length, separator).
fn plain_sep(b: &[u8], j: usize) -> Option<(usize, u8)> {
    match b.get(j)? {
        c @ (b' ' | b'-' | b'.') => Some((1, *c)),
        b'%' if b.get(j..j + 3) == Some(b"%20") => Some((3, b' ')),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Card

/// 13 to 19 digits, contiguous or as a first group of 4 then groups of 3 to 6 with one
/// consistent single separator (space or dash).
fn card_at(b: &[u8], i: usize) -> Option<usize> {
    // Every brand in [`BRANDS`] starts with 2 to 6: timestamps and ids starting with 1 stop here.
    if !matches!(b[i], b'2'..=b'6') {
        return None;
    }
    let (mut num, mut n) = ([0u8; 19], 0);
    let mut take = |from: usize, len: usize| {
        for (k, c) in b[from..from + len].iter().enumerate() {
            num[n + k] = c - b'0';
        }
        n += len;
    };
    let first = digit_run(b, i);
    let end = if (13..=19).contains(&first) {
        take(i, first);
        i + first
    } else if first == 4 {
        let sep = *b.get(i + 4).filter(|c| matches!(c, b' ' | b'-'))?;
        take(i, 4);
        let (mut j, mut total) = (i + 4, 4);
        while b.get(j) == Some(&sep) {
            let g = digit_run(b, j + 1);
            if !(3..=6).contains(&g) || total + g > 19 {
                break;
            }
            take(j + 1, g);
            total += g;
            j += 1 + g;
        }
        j
    } else {
        return None;
    };
    let d = &num[..n];
    (n >= 13 && right_ok(b, end) && brand_fits(d) && luhn(d)).then_some(end)
}

/// Brand prefixes and the lengths issued under them: (prefix digits, from, to, min, max length).
#[rustfmt::skip]
const BRANDS: [(usize, u32, u32, usize, usize); 21] = [
    (1, 4, 4, 13, 13), (1, 4, 4, 16, 16), (1, 4, 4, 19, 19), // Visa
    (2, 51, 55, 16, 16), (4, 2221, 2720, 16, 16), // Mastercard
    (2, 34, 34, 15, 15), (2, 37, 37, 15, 15), // Amex
    (4, 6011, 6011, 16, 19), (3, 644, 649, 16, 19), (2, 65, 65, 16, 19), // Discover
    (4, 3528, 3589, 16, 19), // JCB
    (3, 300, 305, 14, 19), (2, 36, 36, 14, 19), (2, 38, 39, 14, 19), // Diners
    (2, 62, 62, 16, 19), // UnionPay
    (2, 50, 50, 13, 19), (2, 56, 58, 13, 19), (4, 6304, 6304, 13, 19), // Maestro
    (4, 6759, 6759, 13, 19), (6, 676770, 676770, 13, 19), (6, 676774, 676774, 13, 19),
];

/// Whether the digits start with a major brand's prefix and have a length that brand issues.
fn brand_fits(d: &[u8]) -> bool {
    let p6 = d[..6].iter().fold(0, |a, &x| a * 10 + x as u32);
    BRANDS.iter().any(|&(k, from, to, min, max)| {
        let scale = 10u32.pow(6 - k as u32);
        (min..=max).contains(&d.len()) && (from * scale..(to + 1) * scale).contains(&p6)
    })
}

fn luhn(d: &[u8]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = x as u32 * if i % 2 == 1 { 2 } else { 1 };
            if x > 9 { x - 9 } else { x }
        })
        .sum();
    sum.is_multiple_of(10)
}

// ---------------------------------------------------------------------------------------------
// IBAN

/// IBAN registry countries and their lengths, four characters each.
const IBAN_LENGTHS: &str = "AD24AE23AL28AT20AZ28BA20BE16BG22BH22BI27BR29BY28CH21CR22CY28CZ24\
    DE22DJ27DK18DO28EE20EG29ES24FI18FK18FO18FR27GB22GE22GI23GL18GR27GT28HN28HR21HU28IE22IL23\
    IQ23IS26IT27JO30KW30KZ20LB28LC32LI21LT20LU20LV21LY25MC27MD24ME22MK19MN20MR27MT31MU30NI28\
    NL18NO15OM23PK24PL28PS29PT25QA29RO24RS22RU33SA24SC31SD18SE24SI19SK24SM27SO23ST25SV28TL23\
    TN24TR26UA29VA22VG24XK20YE30";

fn iban_len(country: &[u8]) -> Option<usize> {
    let e = IBAN_LENGTHS
        .as_bytes()
        .chunks(4)
        .find(|e| &e[..2] == country)?;
    Some(((e[2] - b'0') * 10 + (e[3] - b'0')) as usize)
}

fn iban_run(b: &[u8], i: usize) -> usize {
    let is = |c: &&u8| c.is_ascii_uppercase() || c.is_ascii_digit();
    b.get(i..).map_or(0, |s| s.iter().take_while(is).count())
}

/// Country, check digits and BBAN, contiguous or in groups of 4 separated by single spaces,
/// exactly as long as the country's IBAN and passing mod-97.
fn iban_at(b: &[u8], i: usize) -> Option<usize> {
    let h = b.get(i..i + 4)?;
    if !(h[0].is_ascii_uppercase()
        && h[1].is_ascii_uppercase()
        && h[2..].iter().all(u8::is_ascii_digit))
    {
        return None;
    }
    let want = iban_len(&h[..2])?;
    let (mut buf, mut n) = ([0u8; 34], 0);
    let run = iban_run(b, i);
    let mut end = i + run;
    if run == want {
        buf[..want].copy_from_slice(&b[i..end]);
        n = want;
    } else if run == 4 {
        end = i;
        let mut g = 4;
        while g > 0 && n + g <= want {
            buf[n..n + g].copy_from_slice(&b[end..end + g]);
            n += g;
            end += g;
            g = if b.get(end) == Some(&b' ') && n < want {
                iban_run(b, end + 1).min(4)
            } else {
                0
            };
            end += (g > 0) as usize;
        }
    }
    let bounded = b.get(end).is_none_or(|&c| !is_word(c));
    (n == want && bounded && mod97(&buf[..n])).then_some(end)
}

/// ISO 13616: the first four characters moved to the end, letters as 10..35, mod 97 == 1.
fn mod97(s: &[u8]) -> bool {
    let r = s[4..].iter().chain(&s[..4]).fold(0u32, |r, &c| match c {
        b'0'..=b'9' => (r * 10 + (c - b'0') as u32) % 97,
        _ => (r * 100 + (c - b'A') as u32 + 10) % 97,
    });
    r == 1
}

// ---------------------------------------------------------------------------------------------
// IP

/// A dotted quad, octets 0-255 without leading zeros, not continued by `.digit` or a token.
/// `N.0.0.0` is skipped: it is a network, not a host, and it is how Chrome reports versions.
fn ipv4_at(b: &[u8], i: usize) -> Option<usize> {
    if i > 0 && b[i - 1] == b'.' {
        return None;
    }
    let (mut j, mut zeros) = (i, 0);
    for k in 0..4 {
        if k > 0 {
            if b.get(j) != Some(&b'.') {
                return None;
            }
            j += 1;
        }
        let n = digit_run(b, j);
        if n == 0 || n > 3 || (n > 1 && b[j] == b'0') {
            return None;
        }
        let v = b[j..j + n]
            .iter()
            .fold(0u32, |a, &c| a * 10 + (c - b'0') as u32);
        if v > 255 {
            return None;
        }
        zeros += (k > 0 && v == 0) as usize;
        j += n;
    }
    (right_ok(b, j) && zeros < 3).then_some(j)
}

/// Maximal runs of hex digits, `:` and `.` that parse as IPv6 and are not clock times. Only
/// runs around a colon followed by another within five bytes are examined.
fn ipv6(b: &[u8], out: &mut Vec<Finding>) {
    let is_v6 = |c: &u8| c.is_ascii_hexdigit() || *c == b':' || *c == b'.';
    let mut i = 0;
    while let Some(p) = b[i..].iter().position(|&c| c == b':') {
        let c = i + p;
        i = c + 1;
        if !b[i..].iter().take(5).any(|&x| x == b':') {
            continue;
        }
        let s = c - b[..c].iter().rev().take_while(|&c| is_v6(c)).count();
        let e = c + b[c..].iter().take_while(|&c| is_v6(c)).count();
        i = e;
        let colons = b[s..e].iter().filter(|&&c| c == b':').count();
        let end = s + b[s..e]
            .iter()
            .rposition(|&c| c != b'.')
            .map_or(0, |p| p + 1);
        let bounded = (s == 0 || !is_word(b[s - 1])) && (e == b.len() || !is_word(b[e]));
        if bounded && ipv6_ok(&b[s..end], colons) {
            push(out, Kind::Ip, s, end);
        }
    }
}

fn ipv6_ok(r: &[u8], colons: usize) -> bool {
    if r.len() > 45 || !r.iter().any(u8::is_ascii_hexdigit) {
        return false;
    }
    let not_clock =
        r.iter().any(u8::is_ascii_alphabetic) || r.windows(2).any(|w| w == b"::") || colons >= 4;
    not_clock && std::str::from_utf8(r).is_ok_and(|s| s.parse::<Ipv6Addr>().is_ok())
}

// ---------------------------------------------------------------------------------------------
// Tokens

fn is_b64url(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

fn b64_run(b: &[u8], i: usize) -> usize {
    b.get(i..)
        .map_or(0, |s| s.iter().take_while(|&&c| is_b64url(c)).count())
}

/// `eyJ…` header (10+ chars) `.` payload (2+) `.` signature (may be empty); up to five segments
/// (JWE) are covered. Starts only where a base64url run starts, so no run is rescanned from
/// inside (`--eyJ…--eyJ…` would otherwise cost quadratic time).
fn jwt_at(b: &[u8], i: usize) -> Option<usize> {
    let run_start = i == 0 || !is_b64url(b[i - 1]) || (i >= 3 && b[i - 3] == b'%');
    (run_start && b[i..].starts_with(b"eyJ"))
        .then(|| jwt_end(b, i))
        .flatten()
}

fn jwt_end(b: &[u8], s: usize) -> Option<usize> {
    let mut j = s + b64_run(b, s);
    if j - s < 10 {
        return None;
    }
    let mut segs = 1;
    while segs < 5 && b.get(j) == Some(&b'.') {
        let k = b64_run(b, j + 1);
        if segs == 1 && k < 2 {
            return None;
        }
        j += 1 + k;
        segs += 1;
        if k == 0 {
            break;
        }
    }
    (segs >= 3).then_some(j)
}

/// `bearer ` or `bearer%20` (any case), then a token68 of 16+ characters; the token only.
fn bearer(b: &[u8], out: &mut Vec<Finding>) {
    let is_t68 = |c: &&u8| c.is_ascii_alphanumeric() || b"-._~+/".contains(c);
    let mut i = 0;
    while let Some(p) = b[i..].iter().position(|&c| c | 0x20 == b'b') {
        let at = i + p;
        i = at + 1;
        let gap = match b[at..].get(6..) {
            Some([b' ', ..]) => 1,
            Some([b'%', b'2', b'0', ..]) => 3,
            _ => continue,
        };
        if !b[at..at + 6].eq_ignore_ascii_case(b"bearer")
            || (at > 0 && b[at - 1].is_ascii_alphanumeric())
        {
            continue;
        }
        let s = at + 6 + gap;
        let t = b[s..].iter().take_while(is_t68).count();
        // 20+: real tokens are longer, and the 16-hex keyed hash that `replace = "hash"`
        // writes must not read as a token again (redaction stays idempotent).
        if t >= 20 {
            let e = s + t + b[s + t..].iter().take_while(|&&c| c == b'=').count();
            push(out, Kind::Bearer, s, e);
            i = e;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// URL secrets

/// Query or fragment parameter names whose values are secrets or personal data.
#[rustfmt::skip]
const SECRET_NAMES: [&str; 31] = [
    "token", "access_token", "id_token", "refresh_token", "auth", "auth_token", "authorization",
    "password", "passwd", "pwd", "pass", "secret", "client_secret", "api_key", "apikey",
    "session", "sessionid", "session_id", "sid", "code", "email", "e-mail", "mail", "phone",
    "tel", "mobile", "ssn", "otp", "pin", "signature", "sig",
];

/// Values of secret parameters after the first `?` or `#`. Delimiters `&` `;` `?` `#` count raw
/// or percent-encoded (GA4 carries page URLs with a second encoding layer), as does `=`. One
/// pass, parameter by parameter: a name is what precedes the first `=` of its parameter, and
/// only a secret's value is looked at for where it ends inside the parameter.
///
/// The separators are taken in order from [`url_separators`]: a page URL is the longest value
/// most beacons have, and searching it byte by byte for each separator in turn cost more than
/// the rest of this detector.
fn url_secret(b: &[u8], out: &mut Vec<Finding>) {
    // Past the query's `?`/`#`; where the current parameter starts; its first `=`.
    let (mut open, mut s, mut eq) = (false, 0, None::<(usize, usize)>);
    let finish = |s: usize, (at, len): (usize, usize), end: usize, out: &mut Vec<Finding>| {
        let i = at + len;
        // Secret names are short; a long one is never looked up.
        if at - s <= 40 && is_secret_name(&b[s..at]) {
            let stop = |c: &u8| c.is_ascii_whitespace() || matches!(c, b'"' | b'\'' | b'<' | b'>');
            let ve = b[i..end].iter().position(stop).map_or(end, |p| i + p);
            if ve > i && !is_placeholder(&b[i..ve]) {
                push(out, Kind::UrlSecret, i, ve);
            }
        }
    };
    url_separators(b, |at, byte, len| {
        match (open, eq, byte) {
            (false, _, b'?' | b'#') => (open, s) = (true, at + len),
            (false, ..) => {}
            (true, None, b'=') => eq = Some((at, len)),
            (true, None, _) => s = at + len, // a parameter without a value
            (true, Some(_), b'=') => {}      // inside the value
            (true, Some(e), _) => {
                finish(s, e, at, out);
                (s, eq) = (at + len, None);
            }
        }
        std::ops::ControlFlow::Continue(())
    });
    if let Some(e) = eq {
        finish(s, e, b.len(), out);
    }
}

fn is_secret_name(raw: &[u8]) -> bool {
    let first = match raw {
        [b'%', ..] => escape_at(raw, 0).unwrap_or(b'%'),
        [c, ..] => *c,
        [] => return false,
    };
    if SECRET_FIRST & 1 << (first.to_ascii_lowercase() & 31) == 0 {
        return false;
    }
    let (mut buf, mut n, mut k) = ([0u8; 16], 0, 0);
    while k < raw.len() {
        if n == buf.len() {
            return false;
        }
        let escape = if raw[k] == b'%' {
            escape_at(raw, k)
        } else {
            None
        };
        let (c, step) = escape.map_or((raw[k], 1), |c| (c, 3));
        buf[n] = c.to_ascii_lowercase();
        n += 1;
        k += step;
    }
    SECRET_NAMES.iter().any(|s| s.as_bytes() == &buf[..n])
}

/// The first letters of [`SECRET_NAMES`] as bits (`1 << (letter & 31)`): a quick rejection.
const SECRET_FIRST: u32 = {
    let (mut bits, mut i) = (0u32, 0);
    while i < SECRET_NAMES.len() {
        bits |= 1 << (SECRET_NAMES[i].as_bytes()[0] & 31);
        i += 1;
    }
    bits
};

/// `[word]` or `%5Bword%5D`: a value a redaction already replaced, so redacting is idempotent.
fn is_placeholder(v: &[u8]) -> bool {
    // What redaction with `replace = "hash"` writes (16 hex digits of the keyed hash) and what
    // `hash` writes (64): already pseudonymous, and redacting them again would not be
    // idempotent.
    if matches!(v.len(), 16 | 64) && v.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return true;
    }
    let inner = match v {
        [b'[', inner @ .., b']'] => inner,
        [b'%', b'5', o, inner @ .., b'%', b'5', c] if o | 0x20 == b'b' && c | 0x20 == b'd' => inner,
        _ => return false,
    };
    !inner.is_empty()
        && inner
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

#[cfg(test)]
mod tests;

//! Glob-style matching exactly as Redis's `stringmatchlen` does it (case-sensitive), for
//! `PSUBSCRIBE` patterns and `PUBSUB CHANNELS`.
//!
//! - `*` matches any run of bytes, `?` any one byte;
//! - `[...]` one byte from a set: single bytes, ranges `a-z` (either order), `\x` for a
//!   literal `x`, `^` first to negate. The set ends at the first `]` (so `[]]` is an
//!   empty set followed by a literal `]`); an unterminated set ends with the pattern;
//! - `\x` outside a set is a literal `x`; a lone `\` at the end is a literal `\`;
//! - anything else is itself.
//!
//! Redis's quirks are kept, because a client sees them in `PUBLISH` counts:
//!
//! - the empty string matches only the empty pattern (`*` does not match `""`);
//! - range bounds and the byte compared to them are C `char`s, signed on x86-64 where
//!   Redis runs: `[a-\xff]` is the range `\xff..=a`, i.e. `-1..=97`, which holds `\0`
//!   but not `b` or `\x80`;
//! - a pattern that reaches its 1,001st `*` that is not the last byte fails to match
//!   ("protection against abusive patterns", Redis 7.0.15 as Debian ships it, and later
//!   Redis releases).
//!
//! Redis recurses at each `*` and stops trying longer matches for an earlier `*` once a
//! later one has failed at every position; that is the classic matcher that backtracks
//! to the most recent `*` only, which is what this is, without recursion (a pattern of
//! 100,000 stars must not overflow a small thread or coroutine stack).
//!
//! Written here rather than taken from a crate: `glob`, `globset` and `wildmatch`
//! implement shell or gitignore semantics, none of these quirks, and a client would
//! see the difference in `PUBLISH` counts.
//!
//! One deliberate difference: that matcher takes up to `pattern length x string length`
//! steps. A match that needs more than [`MATCH_BUDGET`] steps (a megabyte pattern
//! against a megabyte channel name, say) is called a non-match here, where Redis
//! would block for minutes; no pattern a client uses in earnest comes near it.

/// The most steps one match may take before it is given up as a non-match.
pub const MATCH_BUDGET: u64 = 1 << 24;

/// Redis stops matching at this depth of `*` nesting.
const MAX_NESTING: u32 = 1000;

/// The byte at `i`, or 0 past the end: Redis's patterns are NUL-terminated C strings,
/// and its bracket parser looks one byte past the end of an unterminated set.
fn at(pattern: &[u8], i: usize) -> u8 {
    pattern.get(i).copied().unwrap_or(0)
}

/// A byte as a C `char` on x86-64 (signed).
fn signed(b: u8) -> i8 {
    i8::from_ne_bytes([b])
}

/// Matches the one-byte token at `p` (anything but `*`) against `c`: whether it
/// matched, and where the next token starts.
fn token(pattern: &[u8], p: usize, c: u8) -> (bool, usize) {
    let len = pattern.len();
    match pattern[p] {
        b'?' => (true, p + 1),
        b'[' => {
            let mut q = p + 1;
            let negate = at(pattern, q) == b'^';
            if negate {
                q += 1;
            }
            let mut matched = false;
            loop {
                // `len - q` is what Redis calls `patternLen` here; never negative.
                let left = len - q;
                if at(pattern, q) == b'\\' && left >= 2 {
                    q += 1;
                    matched |= pattern[q] == c;
                } else if at(pattern, q) == b']' {
                    break;
                } else if left == 0 {
                    // Unterminated: the set ends with the pattern.
                    q -= 1;
                    break;
                } else if left >= 3 && pattern[q + 1] == b'-' {
                    let (a, b) = (signed(pattern[q]), signed(pattern[q + 2]));
                    let (lo, hi) = if a > b { (b, a) } else { (a, b) };
                    matched |= (lo..=hi).contains(&signed(c));
                    q += 2;
                } else {
                    matched |= pattern[q] == c;
                }
                q += 1;
            }
            (matched != negate, q + 1)
        }
        b'\\' if len - p >= 2 => (pattern[p + 1] == c, p + 2),
        literal => (literal == c, p + 1),
    }
}

/// Whether `string` matches the glob `pattern`, as Redis's `stringmatchlen` (without
/// `nocase`) decides it; see the module docs.
pub fn glob_match(pattern: &[u8], string: &[u8]) -> bool {
    glob_match_within(pattern, string, MATCH_BUDGET).unwrap_or(false)
}

/// [`glob_match`], or `None` once it has taken more than `budget` steps.
pub(crate) fn glob_match_within(pattern: &[u8], string: &[u8], budget: u64) -> Option<bool> {
    let (plen, slen) = (pattern.len(), string.len());
    if slen == 0 {
        return Some(plen == 0);
    }
    let (mut p, mut s) = (0usize, 0usize);
    // The most recent `*`: the pattern after it, the string position it was last
    // tried at, and its nesting depth.
    let mut star: Option<(usize, usize, u32)> = None;
    let mut depth = 0u32;
    let mut steps = 0u64;
    loop {
        steps += 1;
        if steps > budget {
            return None;
        }
        // One pass of Redis's `while (patternLen && stringLen)` loop; what does not
        // `continue` or return is a failure of the current `*`'s attempt.
        if p < plen && s < slen {
            if pattern[p] == b'*' {
                while p + 1 < plen && pattern[p + 1] == b'*' {
                    p += 1;
                    steps += 1;
                }
                if p + 1 == plen {
                    return Some(true);
                }
                depth += 1;
                if depth > MAX_NESTING {
                    return Some(false);
                }
                p += 1;
                star = Some((p, s, depth));
                continue;
            }
            let (matched, next) = token(pattern, p, string[s]);
            // A set costs its length.
            steps += (next - p) as u64;
            if matched {
                p = next;
                s += 1;
                if s < slen {
                    continue;
                }
                while p < plen && pattern[p] == b'*' {
                    p += 1;
                    steps += 1;
                }
                if p == plen {
                    return Some(true);
                }
            }
        }
        // Back to the most recent `*`, one byte further into the string; when it has
        // tried every position, nothing earlier can match either.
        let Some((after, tried, level)) = star else {
            return Some(false);
        };
        if tried + 1 >= slen {
            return Some(false);
        }
        star = Some((after, tried + 1, level));
        p = after;
        s = tried + 1;
        depth = level;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Redis's recursive algorithm, transcribed as directly as Rust allows, to check
    /// the iterative one against (on short inputs, where recursion is harmless).
    fn reference(pattern: &[u8], string: &[u8]) -> bool {
        fn imp(pat: &[u8], mut p: usize, st: &[u8], mut s: usize, skip: &mut bool, n: u32) -> bool {
            if n > MAX_NESTING {
                return false;
            }
            let plen = pat.len();
            while p < plen && s < st.len() {
                match pat[p] {
                    b'*' => {
                        while p < plen && at(pat, p + 1) == b'*' {
                            p += 1;
                        }
                        if plen - p == 1 {
                            return true;
                        }
                        while s < st.len() {
                            if imp(pat, p + 1, st, s, skip, n + 1) {
                                return true;
                            }
                            if *skip {
                                return false;
                            }
                            s += 1;
                        }
                        *skip = true;
                        return false;
                    }
                    _ => {
                        let (ok, next) = token(pat, p, st[s]);
                        if !ok {
                            return false;
                        }
                        s += 1;
                        p = next;
                    }
                }
                if s == st.len() {
                    while at(pat, p) == b'*' {
                        p += 1;
                    }
                    break;
                }
            }
            p == plen && s == st.len()
        }
        imp(pattern, 0, string, 0, &mut false, 0)
    }

    fn check(pattern: &[u8], string: &[u8], want: bool) {
        assert_eq!(
            glob_match(pattern, string),
            want,
            "{} vs {}",
            pattern.escape_ascii(),
            string.escape_ascii()
        );
        assert_eq!(reference(pattern, string), want, "reference disagrees");
    }

    #[test]
    fn matches_like_redis_stringmatchlen() {
        let cases: &[(&[u8], &[u8], bool)] = &[
            // The cases of Redis's own tests (keyspace.tcl, pubsub.tcl, util.c).
            (b"*", b"foo", true),
            (b"foo*", b"foobar", true),
            (b"foo*", b"fo", false),
            (b"*bar", b"foobar", true),
            (b"f?o", b"foo", true),
            (b"f?o", b"fo", false),
            (b"h[ae]llo", b"hello", true),
            (b"h[ae]llo", b"hallo", true),
            (b"h[ae]llo", b"hillo", false),
            (b"h[^e]llo", b"hallo", true),
            (b"h[^e]llo", b"hello", false),
            (b"h[a-b]llo", b"hallo", true),
            (b"h[a-b]llo", b"hbllo", true),
            (b"h[a-b]llo", b"hcllo", false),
            (b"foo.*", b"foo.bar", true),
            (b"foo.*", b"foo", false),
            (
                b"*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b",
                &[b'a'; 60],
                false,
            ),
            (b"a*", b"a", true),
            (b"a**", b"a", true),
            (b"*a*", b"a", true),
            (b"a*b", b"ab", true),
            (b"a*b", b"axxb", true),
            (b"a*b", b"axxbx", false),
            (b"a*b*c", b"abbbc", true),
            (b"?", b"", false),
            (b"", b"", true),
            (b"", b"a", false),
            // Quirks checked against redis-server 7.0.15 (see the module docs).
            (b"*", b"", false),
            (b"[a-\xff]", b"b", false),
            (b"[a-\xff]", b"\x80", false),
            (b"[a-\xff]", b"\x00", true),
            (b"[\x80-\x90]", b"\x85", true),
            (b"[\x7f-\x80]", b"a", true),
            (b"[^", b"x", true),
            (b"[", b"x", false),
            (b"a[", b"a", false),
            (b"\\", b"\\", true),
            (b"\\*", b"*", true),
            (b"\\*", b"a", false),
            (b"\\?x", b"?x", true),
            (b"[]]", b"]", false),
            (b"[]a]", b"a", false),
            (b"[a-]", b"-", false),
            (b"[\\]]", b"]", true),
            (b"[\\-]", b"-", true),
            (b"[z-a]", b"m", true),
            (b"[abc", b"b", true),
            (b"[^abc", b"d", true),
            (b"[a-", b"a", true),
            (b"x\\", b"x\\", true),
            (b"n[a-e]ws.?", b"news.x", true),
        ];
        for &(pattern, string, want) in cases {
            check(pattern, string, want);
        }
    }

    #[test]
    fn the_thousand_and_first_star_fails_like_redis() {
        let a = vec![b'a'; 1001];
        check(&b"*a".repeat(1000), &a, true);
        check(&b"*a".repeat(1001), &a, false);
        // A last `*` returns before it nests.
        check(&[b"*a".repeat(999), b"*".to_vec()].concat(), &a, true);
        check(&[b"*a".repeat(1001), b"*".to_vec()].concat(), &a, false);
    }

    #[test]
    fn a_huge_pattern_does_not_overflow_the_stack() {
        let pattern = b"*a".repeat(100_000);
        let string = vec![b'a'; 100_000];
        assert!(!glob_match(&pattern, &string));
        let stars = vec![b'*'; 1 << 20];
        assert!(glob_match(&stars, b"anything"));
    }

    #[test]
    fn quadratic_matches_are_cut_off() {
        let mut pattern = vec![b'*'];
        pattern.extend(std::iter::repeat_n(b'a', 1 << 20));
        pattern.push(b'b');
        let string = vec![b'a'; 1 << 20];
        assert_eq!(glob_match_within(&pattern, &string, MATCH_BUDGET), None);
        assert!(!glob_match(&pattern, &string));
        // An ordinary pattern against a megabyte name stays well inside the budget.
        assert_eq!(glob_match_within(b"*a", &string, MATCH_BUDGET), Some(true));
        assert_eq!(
            glob_match_within(b"a*[^a]", &string, MATCH_BUDGET),
            Some(false)
        );
    }

    fn glob_bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(prop::sample::select(&b"ab*?[]^-\\\x00\x80\xff"[..]), 0..12)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        #[test]
        fn iterative_equals_recursive(pattern in glob_bytes(), string in glob_bytes()) {
            prop_assert_eq!(glob_match(&pattern, &string), reference(&pattern, &string));
        }
    }
}

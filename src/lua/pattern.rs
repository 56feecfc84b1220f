//! Lua 5.4 patterns (`string.find`, `match`, `gmatch`, `gsub`) matched in Rust, with a step
//! budget. Lua's own matcher backtracks in C between the VM's instruction hooks, so a
//! pathological pattern (`("a*"):rep(30) .. "c"` against 31 bytes) ran for minutes past every
//! limit; this one hands its steps to `budget` every `CHECK_EVERY` of them (and the rest
//! when it is dropped), and stops when it says so.
//!
//! The semantics are Lua 5.4's, written anew from its manual and observed behaviour: classes
//! `%a %c %d %g %l %p %s %u %w %x` (upper case = complement, C locale), `.`, sets `[...]`
//! with ranges, classes and `^`, quantifiers `* + - ?`, anchors `^` (by the caller) and `$`,
//! captures `( )`, position captures `()`, `%bxy`, `%f[set]`, back references `%1`-`%9`, at
//! most 32 captures and a recursion depth of 200 ("pattern too complex"). Reads past the end
//! of the pattern or subject see a NUL byte, as the C code does with Lua's NUL-terminated
//! strings. This module knows no Lua types; `strlib` binds it.

/// Most captures a pattern may hold (LUA_MAXCAPTURES).
pub const MAX_CAPTURES: usize = 32;

/// Recursion depth of the matcher (MAXCCALLS): deeper is "pattern too complex".
const MAX_DEPTH: usize = 200;

/// Matching steps between calls of the budget.
pub const CHECK_EVERY: u32 = 4096;

/// Why a match did not finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// A malformed pattern or capture use, with Lua's message.
    Error(String),
    /// The budget said stop (a limit of the call tripped).
    Budget,
}

pub type Result<T> = std::result::Result<T, Stop>;

fn error<T>(message: impl Into<String>) -> Result<T> {
    Err(Stop::Error(message.into()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Len {
    Closed(usize),
    Position,
    Unfinished,
}

/// One capture's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// The bytes `start..end` of the subject.
    Str(usize, usize),
    /// A position capture: the 1-based index.
    Pos(usize),
}

/// A matcher of one pattern against one subject.
pub struct Matcher<'a> {
    src: &'a [u8],
    pat: &'a [u8],
    level: usize,
    caps: [(usize, Len); MAX_CAPTURES],
    depth: usize,
    steps: u32,
    budget: &'a mut dyn FnMut(u32) -> bool,
}

/// Whether `p` holds none of the characters that make a pattern more than plain text.
pub fn is_plain(p: &[u8]) -> bool {
    !p.iter().any(|c| b"^$*+?.([%-".contains(c))
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Whether `c` is in class `%cl` (C locale).
fn class_matches(c: u8, cl: u8) -> bool {
    let res = match cl.to_ascii_lowercase() {
        b'a' => c.is_ascii_alphabetic(),
        b'c' => c.is_ascii_control(),
        b'd' => c.is_ascii_digit(),
        b'g' => c.is_ascii_graphic(),
        b'l' => c.is_ascii_lowercase(),
        b'p' => c.is_ascii_punctuation(),
        b's' => is_space(c),
        b'u' => c.is_ascii_uppercase(),
        b'w' => c.is_ascii_alphanumeric(),
        b'x' => c.is_ascii_hexdigit(),
        _ => return cl == c,
    };
    if cl.is_ascii_uppercase() {
        !res
    } else {
        res
    }
}

impl<'a> Matcher<'a> {
    pub fn new(src: &'a [u8], pat: &'a [u8], budget: &'a mut dyn FnMut(u32) -> bool) -> Self {
        Matcher {
            src,
            pat,
            level: 0,
            caps: [(0, Len::Unfinished); MAX_CAPTURES],
            depth: MAX_DEPTH,
            steps: 0,
            budget,
        }
    }

    /// Tries the whole pattern (from pattern index `p`) at subject index `s`; the end of
    /// the match if it matches. Captures are reset first.
    pub fn match_at(&mut self, s: usize, p: usize) -> Result<Option<usize>> {
        self.level = 0;
        self.depth = MAX_DEPTH;
        self.do_match(s, p)
    }

    /// The captures of the last match `s..e`; with none, the whole match if `whole`.
    pub fn captures(&self, s: usize, e: usize, whole: bool) -> Result<Vec<Cap>> {
        let n = if self.level == 0 && whole {
            1
        } else {
            self.level
        };
        (0..n).map(|i| self.capture(i, s, e)).collect()
    }

    /// Capture `i` (0-based) of the last match `s..e`; capture 0 of a pattern without
    /// captures is the whole match.
    pub fn capture(&self, i: usize, s: usize, e: usize) -> Result<Cap> {
        if i >= self.level {
            if i != 0 {
                return error(format!("invalid capture index %{}", i + 1));
            }
            return Ok(Cap::Str(s, e));
        }
        let (init, len) = self.caps[i];
        match len {
            Len::Unfinished => error("unfinished capture"),
            Len::Position => Ok(Cap::Pos(init + 1)),
            Len::Closed(l) => Ok(Cap::Str(init, init + l)),
        }
    }

    fn tick(&mut self, cost: usize) -> Result<()> {
        let cost = u32::try_from(cost).unwrap_or(u32::MAX);
        self.steps = self.steps.saturating_add(cost.max(1));
        if self.steps >= CHECK_EVERY {
            let steps = std::mem::take(&mut self.steps);
            if !(self.budget)(steps) {
                return Err(Stop::Budget);
            }
        }
        Ok(())
    }

    fn p_at(&self, i: usize) -> u8 {
        self.pat.get(i).copied().unwrap_or(0)
    }

    fn s_at(&self, i: usize) -> u8 {
        self.src.get(i).copied().unwrap_or(0)
    }

    /// The index just after the single-character class at `p`.
    fn class_end(&mut self, mut p: usize) -> Result<usize> {
        let c = self.p_at(p);
        p += 1;
        match c {
            b'%' => {
                if p >= self.pat.len() {
                    return error("malformed pattern (ends with '%')");
                }
                Ok(p + 1)
            }
            b'[' => {
                if self.p_at(p) == b'^' {
                    p += 1;
                }
                let from = p;
                loop {
                    if p >= self.pat.len() {
                        return error("malformed pattern (missing ']')");
                    }
                    let c = self.pat[p];
                    p += 1;
                    if c == b'%' && p < self.pat.len() {
                        p += 1;
                    }
                    if self.p_at(p) == b']' {
                        self.tick((p - from) / 64)?;
                        return Ok(p + 1);
                    }
                }
            }
            _ => Ok(p),
        }
    }

    /// Whether `c` is in the set `[...]` spanning pattern indices `p` ('[') to `ec` (']').
    fn bracket_matches(&mut self, c: u8, mut p: usize, ec: usize) -> Result<bool> {
        self.tick((ec - p) / 64)?;
        let mut sig = true;
        if self.p_at(p + 1) == b'^' {
            sig = false;
            p += 1;
        }
        loop {
            p += 1;
            if p >= ec {
                return Ok(!sig);
            }
            let pc = self.pat[p];
            if pc == b'%' {
                p += 1;
                if class_matches(c, self.p_at(p)) {
                    return Ok(sig);
                }
            } else if self.p_at(p + 1) == b'-' && p + 2 < ec {
                p += 2;
                if self.pat[p - 2] <= c && c <= self.pat[p] {
                    return Ok(sig);
                }
            } else if pc == c {
                return Ok(sig);
            }
        }
    }

    /// Whether the class at `p..ep` matches the subject byte at `s`.
    fn single_match(&mut self, s: usize, p: usize, ep: usize) -> Result<bool> {
        let Some(&c) = self.src.get(s) else {
            return Ok(false);
        };
        Ok(match self.pat[p] {
            b'.' => true,
            b'%' => class_matches(c, self.p_at(p + 1)),
            b'[' => self.bracket_matches(c, p, ep - 1)?,
            pc => pc == c,
        })
    }

    fn do_match(&mut self, s: usize, p: usize) -> Result<Option<usize>> {
        if self.depth == 0 {
            return error("pattern too complex");
        }
        self.depth -= 1;
        let r = self.match_here(s, p);
        self.depth += 1;
        r
    }

    fn match_here(&mut self, mut s: usize, mut p: usize) -> Result<Option<usize>> {
        loop {
            self.tick(1)?;
            if p >= self.pat.len() {
                return Ok(Some(s));
            }
            match self.pat[p] {
                b'(' if self.p_at(p + 1) == b')' => {
                    return self.start_capture(s, p + 2, Len::Position)
                }
                b'(' => return self.start_capture(s, p + 1, Len::Unfinished),
                b')' => return self.end_capture(s, p + 1),
                b'$' if p + 1 == self.pat.len() => {
                    return Ok((s == self.src.len()).then_some(s));
                }
                b'%' if self.p_at(p + 1) == b'b' => match self.balance(s, p + 2)? {
                    Some(next) => {
                        s = next;
                        p += 4;
                    }
                    None => return Ok(None),
                },
                b'%' if self.p_at(p + 1) == b'f' => {
                    p += 2;
                    if self.p_at(p) != b'[' {
                        return error("missing '[' after '%f' in pattern");
                    }
                    let ep = self.class_end(p)?;
                    let previous = if s == 0 { 0 } else { self.s_at(s - 1) };
                    let here = self.s_at(s);
                    if !self.bracket_matches(previous, p, ep - 1)?
                        && self.bracket_matches(here, p, ep - 1)?
                    {
                        p = ep;
                    } else {
                        return Ok(None);
                    }
                }
                b'%' if self.p_at(p + 1).is_ascii_digit() => {
                    match self.back_reference(s, self.p_at(p + 1))? {
                        Some(next) => {
                            s = next;
                            p += 2;
                        }
                        None => return Ok(None),
                    }
                }
                _ => {
                    let ep = self.class_end(p)?;
                    let suffix = self.p_at(ep);
                    if !self.single_match(s, p, ep)? {
                        if matches!(suffix, b'*' | b'?' | b'-') {
                            p = ep + 1;
                            continue;
                        }
                        return Ok(None);
                    }
                    match suffix {
                        b'?' => match self.do_match(s + 1, ep + 1)? {
                            Some(r) => return Ok(Some(r)),
                            None => p = ep + 1,
                        },
                        b'+' => return self.max_expand(s + 1, p, ep),
                        b'*' => return self.max_expand(s, p, ep),
                        b'-' => return self.min_expand(s, p, ep),
                        _ => {
                            s += 1;
                            p = ep;
                        }
                    }
                }
            }
        }
    }

    /// Greedy repetition: the longest run first, then shorter ones.
    fn max_expand(&mut self, s: usize, p: usize, ep: usize) -> Result<Option<usize>> {
        let mut i = 0;
        while self.single_match(s + i, p, ep)? {
            self.tick(1)?;
            i += 1;
        }
        loop {
            if let Some(r) = self.do_match(s + i, ep + 1)? {
                return Ok(Some(r));
            }
            if i == 0 {
                return Ok(None);
            }
            i -= 1;
        }
    }

    /// Lazy repetition: the shortest run first.
    fn min_expand(&mut self, mut s: usize, p: usize, ep: usize) -> Result<Option<usize>> {
        loop {
            if let Some(r) = self.do_match(s, ep + 1)? {
                return Ok(Some(r));
            }
            if !self.single_match(s, p, ep)? {
                return Ok(None);
            }
            s += 1;
        }
    }

    fn start_capture(&mut self, s: usize, p: usize, what: Len) -> Result<Option<usize>> {
        if self.level >= MAX_CAPTURES {
            return error("too many captures");
        }
        self.caps[self.level] = (s, what);
        self.level += 1;
        let r = self.do_match(s, p)?;
        if r.is_none() {
            self.level -= 1;
        }
        Ok(r)
    }

    fn end_capture(&mut self, s: usize, p: usize) -> Result<Option<usize>> {
        let Some(l) = (0..self.level)
            .rev()
            .find(|&l| self.caps[l].1 == Len::Unfinished)
        else {
            return error("invalid pattern capture");
        };
        self.caps[l].1 = Len::Closed(s - self.caps[l].0);
        let r = self.do_match(s, p)?;
        if r.is_none() {
            self.caps[l].1 = Len::Unfinished;
        }
        Ok(r)
    }

    /// `%bxy` with `x` at pattern index `p`.
    fn balance(&mut self, s: usize, p: usize) -> Result<Option<usize>> {
        if p + 1 >= self.pat.len() {
            return error("malformed pattern (missing arguments to '%b')");
        }
        if self.s_at(s) != self.pat[p] {
            return Ok(None);
        }
        let (open, close) = (self.pat[p], self.pat[p + 1]);
        let mut depth = 1;
        for i in s + 1..self.src.len() {
            self.tick(1)?;
            let c = self.src[i];
            if c == close {
                depth -= 1;
                if depth == 0 {
                    return Ok(Some(i + 1));
                }
            } else if c == open {
                depth += 1;
            }
        }
        Ok(None)
    }

    /// `%1`..`%9`: the text of an earlier capture again.
    fn back_reference(&mut self, s: usize, digit: u8) -> Result<Option<usize>> {
        let l = digit as i32 - b'1' as i32;
        let bad = || error(format!("invalid capture index %{}", l + 1));
        if l < 0 || l as usize >= self.level {
            return bad();
        }
        let (init, len) = self.caps[l as usize];
        let len = match len {
            Len::Unfinished => return bad(),
            // A position has no text; as in Lua, it never matches.
            Len::Position => return Ok(None),
            Len::Closed(len) => len,
        };
        self.tick(len / 64)?;
        let matches =
            self.src.len() - s >= len && self.src[init..init + len] == self.src[s..s + len];
        Ok(matches.then_some(s + len))
    }
}

impl Drop for Matcher<'_> {
    /// Steps not yet handed over are charged too (a call of many short matches is not
    /// free); the answer no longer matters, a tripped limit stays tripped.
    fn drop(&mut self) {
        if self.steps > 0 {
            let _ = (self.budget)(self.steps);
        }
    }
}

/// Where a search starts: Lua's `posrelatI` of `init` (1-based, negative from the end) as a
/// 0-based index, which may be past the end.
pub fn start_index(init: i64, len: usize) -> usize {
    let len_i = i64::try_from(len).unwrap_or(i64::MAX);
    let one_based = if init > 0 {
        usize::try_from(init).unwrap_or(usize::MAX)
    } else if init == 0 || init < -len_i {
        1
    } else {
        (len_i + init + 1) as usize
    };
    one_based - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// string.find semantics over the matcher: (start, end) 1-based, and the captures.
    fn find(s: &str, p: &str) -> Result<Option<(usize, usize, Vec<Cap>)>> {
        let mut always = |_| true;
        let (src, mut pat) = (s.as_bytes(), p.as_bytes());
        let anchor = pat.first() == Some(&b'^');
        if anchor {
            pat = &pat[1..];
        }
        let mut m = Matcher::new(src, pat, &mut always);
        let mut s1 = 0;
        loop {
            if let Some(e) = m.match_at(s1, 0)? {
                return Ok(Some((s1 + 1, e, m.captures(s1, e, false)?)));
            }
            s1 += 1;
            if s1 > src.len() || anchor {
                return Ok(None);
            }
        }
    }

    fn span(s: &str, p: &str) -> Option<(usize, usize)> {
        find(s, p).unwrap().map(|(a, b, _)| (a, b))
    }

    #[test]
    fn classes_sets_and_quantifiers_match_as_in_lua() {
        assert_eq!(span("hello world", "o w"), Some((5, 7)));
        assert_eq!(span("hello", "l+"), Some((3, 4)));
        assert_eq!(span("hello", "l-o"), Some((3, 5)));
        assert_eq!(span("abc123", "%d+"), Some((4, 6)));
        assert_eq!(span("abc123", "%D+"), Some((1, 3)));
        assert_eq!(span("a.b", "%."), Some((2, 2)));
        assert_eq!(span("x = 10", "[%w_]+%s*=%s*%d"), Some((1, 5)));
        assert_eq!(span("ABCdef", "[a-z]+"), Some((4, 6)));
        assert_eq!(span("ABCdef", "[^A-Z]"), Some((4, 4)));
        assert_eq!(span("a]b", "[]]"), Some((2, 2)));
        assert_eq!(span("a-b", "[a-]"), Some((1, 1)));
        assert_eq!(span("colour", "colou?r"), Some((1, 6)));
        assert_eq!(span("color", "colou?r"), Some((1, 5)));
        assert_eq!(span("aaa", "^a"), Some((1, 1)));
        assert_eq!(span("baa", "^a"), None);
        assert_eq!(span("abc", "c$"), Some((3, 3)));
        assert_eq!(span("a$c", "$c"), Some((2, 3)));
        assert_eq!(span("", ""), Some((1, 0)));
        assert_eq!(span("\x0b", "%s"), Some((1, 1)));
    }

    #[test]
    fn captures_positions_balance_frontier_and_back_references() {
        let (_, _, caps) = find("key = value", "(%w+) = (%w+)").unwrap().unwrap();
        assert_eq!(caps, vec![Cap::Str(0, 3), Cap::Str(6, 11)]);
        let (_, _, caps) = find("abc", "()b()").unwrap().unwrap();
        assert_eq!(caps, vec![Cap::Pos(2), Cap::Pos(3)]);
        assert_eq!(span("x(a(b)c)y", "%b()"), Some((2, 8)));
        assert_eq!(span("THE (quick) fox", "%f[%a]%a+"), Some((1, 3)));
        assert_eq!(span("hello THE end", "%f[%l]%a+%f[%A]"), Some((1, 5)));
        assert_eq!(span("say 'hi' now", "(['\"]).-%1"), Some((5, 8)));
        assert_eq!(span("aXbXa", "(X).-%1"), Some((2, 4)));
    }

    #[test]
    fn malformed_patterns_give_luas_messages() {
        let msg = |p: &str| match find("abc", p) {
            Err(Stop::Error(m)) => m,
            other => panic!("{p}: {other:?}"),
        };
        assert_eq!(msg("%"), "malformed pattern (ends with '%')");
        assert_eq!(msg("[a"), "malformed pattern (missing ']')");
        assert_eq!(msg("%b"), "malformed pattern (missing arguments to '%b')");
        assert_eq!(msg("%fa"), "missing '[' after '%f' in pattern");
        assert_eq!(msg("(a%2)"), "invalid capture index %2");
        assert_eq!(msg("a)"), "invalid pattern capture");
        assert_eq!(msg(&"(".repeat(33)), "too many captures");
        assert_eq!(
            match find(&"a".repeat(300), &"a?".repeat(300)) {
                Err(Stop::Error(m)) => m,
                other => panic!("{other:?}"),
            },
            "pattern too complex"
        );
    }

    #[test]
    fn the_budget_stops_a_catastrophic_backtrack() {
        let subject = format!("{}b", "a".repeat(30));
        let pattern = format!("{}c", "a*".repeat(30));
        let mut calls = 0;
        let mut budget = |_| {
            calls += 1;
            calls < 100
        };
        let mut m = Matcher::new(subject.as_bytes(), pattern.as_bytes(), &mut budget);
        assert_eq!(m.match_at(0, 0), Err(Stop::Budget));
    }

    #[test]
    fn start_index_follows_posrelat() {
        assert_eq!(start_index(1, 5), 0);
        assert_eq!(start_index(0, 5), 0);
        assert_eq!(start_index(-2, 5), 3);
        assert_eq!(start_index(-10, 5), 0);
        assert_eq!(start_index(7, 5), 6);
    }
}

//! Port of `edu.cmu.meteor.util.Normalizer.normalizeLine` (METEOR 1.5, English,
//! `keepPunctuation = true`, i.e. the `-norm` flag), without a regex engine.
//!
//! Every Java `Pattern.replaceAll` used by the jar is a left-to-right scan for
//! non-overlapping matches; the helpers below reproduce that scan exactly for the
//! fixed pattern shapes the normaliser uses (single characters and
//! `(class)[x](class)` triples). Character classes follow Java's defaults:
//! `\p{Digit}` = ASCII `0-9`, `\p{Lower}` = ASCII `a-z`, `\s` = `[ \t\n\x0B\f\r]`.

use std::collections::HashMap;

/// `alpha` of the jar: `A-Za-zŠŽšžŸÀ-ÖØ-öø-žЀ-ӿԀ-ԧꙀ-ꙮ꙾-ꚗᴀ-ᵿ`.
fn is_alpha(c: char) -> bool {
    let u = c as u32;
    c.is_ascii_alphabetic()
        || (0xC0..=0xD6).contains(&u)
        || (0xD8..=0xF6).contains(&u)
        || (0xF8..=0x17E).contains(&u)
        || (0x400..=0x527).contains(&u)
        || (0xA640..=0xA66E).contains(&u)
        || (0xA67E..=0xA697).contains(&u)
        || (0x1D00..=0x1D7F).contains(&u)
}

fn is_digit(c: char) -> bool {
    c.is_ascii_digit()
}

fn is_alnum(c: char) -> bool {
    is_digit(c) || is_alpha(c)
}

/// Java regex `\s`.
fn is_java_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\u{0B}' | '\u{0C}' | '\r')
}

/// `java.util.StringTokenizer` default delimiters.
fn is_tok_delim(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{0C}')
}

/// Characters of the jar's `r_white` class `[ \u2000-\u200A\u202F\u205F\u3000\u00A0]`.
fn is_white(c: char) -> bool {
    matches!(
        c,
        ' ' | '\u{2000}'..='\u{200A}' | '\u{202F}' | '\u{205F}' | '\u{3000}' | '\u{A0}'
    )
}

/// English non-breaking prefixes of the jar (`nonbreaking/english.prefixes`, from Moses).
/// `true` = `#NUMERIC_ONLY#`.
const NBP: &[(&str, bool)] = &[
    ("A", false),
    ("B", false),
    ("C", false),
    ("D", false),
    ("E", false),
    ("F", false),
    ("G", false),
    ("H", false),
    ("I", false),
    ("J", false),
    ("K", false),
    ("L", false),
    ("M", false),
    ("N", false),
    ("O", false),
    ("P", false),
    ("Q", false),
    ("R", false),
    ("S", false),
    ("T", false),
    ("U", false),
    ("V", false),
    ("W", false),
    ("X", false),
    ("Y", false),
    ("Z", false),
    ("Adj", false),
    ("Adm", false),
    ("Adv", false),
    ("Asst", false),
    ("Bart", false),
    ("Bldg", false),
    ("Brig", false),
    ("Bros", false),
    ("Capt", false),
    ("Cmdr", false),
    ("Col", false),
    ("Comdr", false),
    ("Con", false),
    ("Corp", false),
    ("Cpl", false),
    ("DR", false),
    ("Dr", false),
    ("Drs", false),
    ("Ens", false),
    ("Gen", false),
    ("Gov", false),
    ("Hon", false),
    ("Hr", false),
    ("Hosp", false),
    ("Insp", false),
    ("Lt", false),
    ("MM", false),
    ("MR", false),
    ("MRS", false),
    ("MS", false),
    ("Maj", false),
    ("Messrs", false),
    ("Mlle", false),
    ("Mme", false),
    ("Mr", false),
    ("Mrs", false),
    ("Ms", false),
    ("Msgr", false),
    ("Op", false),
    ("Ord", false),
    ("Pfc", false),
    ("Ph", false),
    ("Prof", false),
    ("Pvt", false),
    ("Rep", false),
    ("Reps", false),
    ("Res", false),
    ("Rev", false),
    ("Rt", false),
    ("Sen", false),
    ("Sens", false),
    ("Sfc", false),
    ("Sgt", false),
    ("Sr", false),
    ("St", false),
    ("Supt", false),
    ("Surg", false),
    ("v", false),
    ("vs", false),
    ("i.e", false),
    ("rev", false),
    ("e.g", false),
    ("No", true),
    ("Nos", false),
    ("Art", true),
    ("Nr", false),
    ("pp", true),
];

/// Non-breaking prefix table, built once per scorer.
pub(crate) struct Normalizer {
    nbp: HashMap<&'static str, bool>,
}

impl Default for Normalizer {
    fn default() -> Self {
        Normalizer {
            nbp: NBP.iter().copied().collect(),
        }
    }
}

/// Replace every non-overlapping match of `(a)[mid](b)` by `a + rep + b`
/// (Java `replaceAll` with `$1<rep>$2`).
fn replace_triple(
    s: &[char],
    a: impl Fn(char) -> bool,
    mid: char,
    b: impl Fn(char) -> bool,
    rep: &str,
) -> Vec<char> {
    let mut out = Vec::with_capacity(s.len() + 8);
    let mut i = 0;
    while i < s.len() {
        if i + 2 < s.len() && a(s[i]) && s[i + 1] == mid && b(s[i + 2]) {
            out.push(s[i]);
            out.extend(rep.chars());
            out.push(s[i + 2]);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// Java `String.replace(CharSequence, CharSequence)`: literal, left to right.
fn replace_lit(s: &[char], from: &str, to: &str) -> Vec<char> {
    let f: Vec<char> = from.chars().collect();
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if i + f.len() <= s.len() && s[i..i + f.len()] == f[..] {
            out.extend(to.chars());
            i += f.len();
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
fn contains(s: &[char], pat: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    p.len() <= s.len() && s.windows(p.len()).any(|w| w == &p[..])
}

const DOTMULTI: [char; 8] = ['D', 'O', 'T', 'M', 'U', 'L', 'T', 'I'];

/// The jar's loop `while (line.contains("DOTMULTI.")) { line =
/// line.replaceAll("DOTMULTI\\.([^\\.])", "DOTDOTMULTI $1").replaceAll("DOTMULTI\\.",
/// "DOTDOTMULTI"); }` in one pass. Each pass moves one dot after every `DOTMULTI` to a
/// `DOT` before it (the second `replaceAll`), except that a `DOTMULTI` with one dot left
/// and a character after it takes the first `replaceAll` instead, which also puts a
/// space after it: `DOTMULTI` + `d` dots + `x` ends as `DOT`×d + `DOTMULTI ` + `x`. The
/// first `replaceAll` consumes `x`, so when `x` is the `D` of the next `DOTMULTI` and
/// that one has one dot in the same (first) pass, i.e. both had one dot, the next one
/// takes the second `replaceAll` and gets no space. (With more dots, the next one has
/// grown a `DOT` in front by then, whose `D` is consumed instead.) The loop takes one pass per dot, quadratic on a long
/// run of dots; this is linear (checked against the loop by the tests).
fn escape_dot_runs(w: &[char]) -> Vec<char> {
    let mut out = Vec::with_capacity(w.len() + 16);
    // The last `DOTMULTI` with dots: where its dots end, how many, and whether it took
    // the first `replaceAll` (consuming the character after it).
    let mut prev: Option<(usize, usize, bool)> = None;
    let mut i = 0;
    while i < w.len() {
        if w[i..].starts_with(&DOTMULTI) {
            let dots = w[i + 8..].iter().take_while(|&&c| c == '.').count();
            if dots > 0 {
                let end = i + 8 + dots;
                let blocked = dots == 1 && prev == Some((i, 1, true));
                let spaced = end < w.len() && !blocked;
                for _ in 0..dots {
                    out.extend_from_slice(&['D', 'O', 'T']);
                }
                out.extend_from_slice(&DOTMULTI);
                if spaced {
                    out.push(' ');
                }
                prev = Some((end, dots, spaced));
                i = end;
                continue;
            }
        }
        out.push(w[i]);
        i += 1;
    }
    out
}

/// The jar's `while (line.contains("DOTDOTMULTI")) line = line.replaceAll("DOTDOTMULTI",
/// "DOTMULTI."); line = line.replaceAll("DOTMULTI", ".");` in one pass: every `MULTI`
/// preceded by `a ≥ 1` consecutive `DOT`s becomes `a` dots (the loop moves one `DOT` per
/// pass, quadratic on a long run; this is linear, checked against the loop by the tests).
fn unescape_dot_runs(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    // `out` receives everything up to `done`; a run of DOTs is held back until it is
    // known whether `MULTI` follows.
    let mut done = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"DOT") {
            let start = i;
            let mut dots = 0;
            while b[i..].starts_with(b"DOT") {
                i += 3;
                dots += 1;
            }
            if b[i..].starts_with(b"MULTI") {
                out.push_str(&s[done..start]);
                out.extend(std::iter::repeat_n('.', dots));
                i += 5;
                done = i;
            }
            continue;
        }
        i += 1;
    }
    out.push_str(&s[done..]);
    out
}

impl Normalizer {
    /// `Normalizer.normalizeLine(line, LANG_EN, keepPunctuation = true)`.
    /// Lower-casing is *not* done here (the scorer does it afterwards, as the jar does).
    pub(crate) fn normalize(&self, line: &str) -> String {
        // Wrap in whitespace and separate all non-alphanumeric "other" characters.
        let mut w: Vec<char> = Vec::with_capacity(line.len() + 16);
        w.push(' ');
        for c in line.chars() {
            let special = is_alnum(c)
                || is_java_space(c)
                || matches!(c, '.' | '\'' | '`' | ',' | '-' | '\u{2018}' | '\u{2019}');
            if special {
                w.push(c);
            } else {
                w.push(' ');
                w.push(c);
                w.push(' ');
            }
        }
        w.push(' ');

        // Escape multiple dots: `\.([\.]+)` -> " DOTMULTI$1".
        let mut t = Vec::with_capacity(w.len() + 16);
        let mut i = 0;
        while i < w.len() {
            if w[i] == '.' && i + 1 < w.len() && w[i + 1] == '.' {
                let mut j = i + 1;
                while j < w.len() && w[j] == '.' {
                    j += 1;
                }
                t.extend(" DOTMULTI".chars());
                t.extend(std::iter::repeat_n('.', j - i - 1));
                i = j;
            } else {
                t.push(w[i]);
                i += 1;
            }
        }
        w = escape_dot_runs(&t);

        // Separate commas except within numbers.
        let nd = |c: char| !is_digit(c);
        w = replace_triple(&w, nd, ',', nd, " , ");
        w = replace_triple(&w, is_digit, ',', nd, " , ");
        w = replace_triple(&w, nd, ',', is_digit, " , ");

        // Normalise quotes.
        for c in w.iter_mut() {
            if matches!(*c, '`' | '\u{2018}' | '\u{2019}') {
                *c = '\'';
            }
        }
        let mut t = Vec::with_capacity(w.len() + 8);
        let mut i = 0;
        while i < w.len() {
            if w[i] == '\u{201C}' || w[i] == '\u{201D}' {
                t.extend(" \" ".chars());
                i += 1;
            } else if w[i] == '\'' && i + 1 < w.len() && w[i + 1] == '\'' {
                t.extend(" \" ".chars());
                i += 2;
            } else {
                t.push(w[i]);
                i += 1;
            }
        }
        w = t;

        // Normalise dashes.
        w = replace_lit(&w, "\u{2013}", "-");
        w = replace_lit(&w, "--", "-");
        // Remove dashes between words: `([alnum\.])[\-]([alnum])` -> "$1 $2".
        w = replace_triple(&w, |c| is_alnum(c) || c == '.', '-', is_alnum, " ");

        // English contractions.
        let na = |c: char| !is_alpha(c);
        w = replace_triple(&w, na, '\'', na, " ' ");
        w = replace_triple(&w, |c| !is_alpha(c) && !is_digit(c), '\'', is_alpha, " ' ");
        w = replace_triple(&w, is_alpha, '\'', na, " ' ");
        w = replace_triple(&w, is_alpha, '\'', is_alpha, " '");
        w = replace_triple(&w, is_digit, '\'', |c| c == 's', " '");

        // Tokenise (dots still attached) and rebuild, splitting final dots unless the
        // word is a non-breaking prefix.
        let line: String = w.into_iter().collect();
        let words: Vec<&str> = line.split(is_tok_delim).filter(|s| !s.is_empty()).collect();
        let mut sb = String::with_capacity(line.len() + 8);
        for (i, word) in words.iter().enumerate() {
            // Java String.length() > 1 (UTF-16 units)
            if word.encode_utf16().count() > 1 && word.ends_with('.') {
                let pre = &word[..word.len() - 1];
                let ty = self.nbp.get(pre).copied();
                let next = words.get(i + 1);
                if pre.contains('.') && pre.chars().any(is_alpha) {
                    sb.push_str(&word.replace('.', ""));
                } else if ty == Some(false)
                    || next.is_some_and(|n| n.starts_with(|c: char| c.is_ascii_lowercase()))
                    || (ty == Some(true)
                        && next.is_some_and(|n| n.starts_with(|c: char| c.is_ascii_digit())))
                {
                    // always non-breaking, followed by lower case, or numeric-only
                    // prefix followed by a number: keep the dot attached
                    sb.push_str(word);
                } else {
                    sb.push_str(pre);
                    sb.push_str(" .");
                }
            } else {
                sb.push_str(word);
            }
            sb.push(' ');
        }

        // Unescape multiple dots.
        let s = unescape_dot_runs(&sb);

        // Normalise whitespace, then Java `trim()` (strips chars <= U+0020).
        let mut out = String::with_capacity(s.len());
        let mut in_white = false;
        for c in s.chars() {
            if is_white(c) {
                if !in_white {
                    out.push(' ');
                }
                in_white = true;
            } else {
                out.push(c);
                in_white = false;
            }
        }
        out.trim_matches(|c: char| c <= ' ').to_string()
    }
}

/// Java `String.toLowerCase()` (root-locale behaviour is close to Rust's
/// `to_lowercase`; the only notable difference is final-sigma handling).
pub(crate) fn java_lowercase(s: &str) -> String {
    s.to_lowercase()
}

/// `java.util.StringTokenizer` split used by `Alignment`.
pub(crate) fn tokenize(s: &str) -> Vec<String> {
    s.split(is_tok_delim)
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The jar's loops, as this crate ran them before (one pass per dot).
    fn escape_loop(w: &[char]) -> Vec<char> {
        let mut w = w.to_vec();
        while contains(&w, "DOTMULTI.") {
            let pat: Vec<char> = "DOTMULTI.".chars().collect();
            let mut t = Vec::with_capacity(w.len() + 8);
            let mut i = 0;
            while i < w.len() {
                if i + pat.len() < w.len()
                    && w[i..i + pat.len()] == pat[..]
                    && w[i + pat.len()] != '.'
                {
                    t.extend("DOTDOTMULTI ".chars());
                    t.push(w[i + pat.len()]);
                    i += pat.len() + 1;
                } else {
                    t.push(w[i]);
                    i += 1;
                }
            }
            w = replace_lit(&t, "DOTMULTI.", "DOTDOTMULTI");
        }
        w
    }

    fn unescape_loop(s: &str) -> String {
        let mut s = s.to_string();
        while s.contains("DOTDOTMULTI") {
            s = s.replace("DOTDOTMULTI", "DOTMULTI.");
        }
        s.replace("DOTMULTI", ".")
    }

    #[test]
    fn one_pass_dot_escapes_equal_the_jar_loops() {
        const PIECES: [&str; 10] = [
            ".",
            "..",
            "DOTMULTI",
            "DOT",
            "MULTI",
            "DOTDOTMULTI",
            " ",
            "a",
            "D",
            "OT",
        ];
        let mut state = 0x1234_5678_9ABC_DEF0u64;
        for case in 0..3000 {
            let mut text = String::new();
            for _ in 0..(case % 17) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                text.push_str(PIECES[(state % PIECES.len() as u64) as usize]);
            }
            let w: Vec<char> = text.chars().collect();
            assert_eq!(escape_dot_runs(&w), escape_loop(&w), "{text:?}");
            assert_eq!(unescape_dot_runs(&text), unescape_loop(&text), "{text:?}");
        }
        // A long run of dots stays one token and is linear.
        let n = Normalizer::default();
        let dots = ".".repeat(20_000);
        assert_eq!(n.normalize(&format!("a{dots}b")), format!("a {dots} b"));
    }
}

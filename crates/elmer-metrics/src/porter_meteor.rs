//! Snowball English ("Porter2") stemmer, as used by METEOR 1.5
//! (`org.tartarus.snowball.ext.englishStemmer`, wrapped by `SnowballStemmerWrapper`).
//!
//! This is a direct transcription of the Snowball `english.sbl` program
//! (prelude, `mark_regions` with the `gener`/`commun`/`arsen` exceptions,
//! `exception1`, Step 1a..5, `exception2`, postlude). It works on `char`s;
//! any character outside `a-y` is a non-vowel, exactly like the generated Java.
//! Input is expected to be lower-cased already (METEOR lower-cases before stemming).

fn is_v(c: char) -> bool {
    matches!(c, 'a' | 'e' | 'i' | 'o' | 'u' | 'y')
}

/// `non-v_WXY` complement: v plus `w`, `x`, `Y`.
fn is_v_wxy(c: char) -> bool {
    is_v(c) || matches!(c, 'w' | 'x' | 'Y')
}

fn is_valid_li(c: char) -> bool {
    matches!(c, 'c' | 'd' | 'e' | 'g' | 'h' | 'k' | 'm' | 'n' | 'r' | 't')
}

fn ends_with(w: &[char], suf: &str) -> bool {
    let n = suf.chars().count();
    w.len() >= n && w[w.len() - n..].iter().copied().eq(suf.chars())
}

/// Longest suffix among `list` (Snowball `among` semantics: only the longest is tried).
fn longest<'a>(w: &[char], list: &[&'a str]) -> Option<&'a str> {
    let mut best: Option<&'a str> = None;
    for s in list {
        if ends_with(w, s) && best.is_none_or(|b| s.len() > b.len()) {
            best = Some(s);
        }
    }
    best
}

fn replace_suffix(w: &mut Vec<char>, suf_len: usize, rep: &str) {
    let n = w.len() - suf_len;
    w.truncate(n);
    w.extend(rep.chars());
}

/// `shortv` evaluated with the cursor at position `c` (backward mode):
/// `( non-v_WXY v non-v ) or ( non-v v atlimit )`.
fn shortv(w: &[char], c: usize) -> bool {
    if c >= 3 && !is_v_wxy(w[c - 1]) && is_v(w[c - 2]) && !is_v(w[c - 3]) {
        return true;
    }
    c == 2 && !is_v(w[1]) && is_v(w[0])
}

/// Position just past the first "vowel followed by non-vowel" at or after `from`
/// (`gopast v gopast non-v`), or `len` when there is none.
fn region_after(w: &[char], from: usize) -> usize {
    let mut i = from;
    while i < w.len() && !is_v(w[i]) {
        i += 1;
    }
    if i >= w.len() {
        return w.len();
    }
    i += 1;
    while i < w.len() && is_v(w[i]) {
        i += 1;
    }
    if i >= w.len() {
        return w.len();
    }
    i + 1
}

fn exception1(word: &str) -> Option<&'static str> {
    Some(match word {
        "skis" => "ski",
        "skies" => "sky",
        "dying" => "die",
        "lying" => "lie",
        "tying" => "tie",
        "idly" => "idl",
        "gently" => "gentl",
        "ugly" => "ugli",
        "early" => "earli",
        "only" => "onli",
        "singly" => "singl",
        "sky" => "sky",
        "news" => "news",
        "howe" => "howe",
        "atlas" => "atlas",
        "cosmos" => "cosmos",
        "bias" => "bias",
        "andes" => "andes",
        _ => return None,
    })
}

/// Stem one (lower-cased) word.
pub(crate) fn stem(word: &str) -> String {
    if let Some(e) = exception1(word) {
        return e.to_string();
    }
    let mut w: Vec<char> = word.chars().collect();
    if w.len() < 3 {
        return word.to_string();
    }

    // prelude
    if w.first() == Some(&'\'') {
        w.remove(0);
    }
    let mut y_found = false;
    if w.first() == Some(&'y') {
        w[0] = 'Y';
        y_found = true;
    }
    for i in 1..w.len() {
        if w[i] == 'y' && is_v(w[i - 1]) {
            w[i] = 'Y';
            y_found = true;
        }
    }

    // mark_regions
    let p1 =
        if w.starts_with(&['g', 'e', 'n', 'e', 'r']) || w.starts_with(&['a', 'r', 's', 'e', 'n']) {
            5
        } else if w.starts_with(&['c', 'o', 'm', 'm', 'u', 'n']) {
            6
        } else {
            region_after(&w, 0)
        };
    let p2 = if p1 >= w.len() {
        w.len()
    } else {
        region_after(&w, p1)
    };

    // Step 1a (with Step 0 as its `try` prefix)
    if let Some(s) = longest(&w, &["'", "'s", "'s'"]) {
        let n = s.chars().count();
        w.truncate(w.len() - n);
    }
    if let Some(s) = longest(&w, &["sses", "ied", "ies", "s", "us", "ss"]) {
        let k = w.len() - s.len();
        match s {
            "sses" => replace_suffix(&mut w, 4, "ss"),
            "ied" | "ies" => {
                if k >= 2 {
                    replace_suffix(&mut w, 3, "i")
                } else {
                    replace_suffix(&mut w, 3, "ie")
                }
            }
            // next gopast v: a vowel strictly before position k-1
            "s" if k >= 1 && w[..k - 1].iter().any(|&c| is_v(c)) => w.truncate(k),
            _ => {}
        }
    }

    // exception2
    let cur: String = w.iter().collect();
    let exc2 = matches!(
        cur.as_str(),
        "inning" | "outing" | "canning" | "herring" | "earring" | "proceed" | "exceed" | "succeed"
    );
    if !exc2 {
        step1b(&mut w, p1);
        // Step 1c
        let n = w.len();
        if n >= 3 && matches!(w[n - 1], 'y' | 'Y') && !is_v(w[n - 2]) {
            w[n - 1] = 'i';
        }
        step2(&mut w, p1);
        step3(&mut w, p1, p2);
        step4(&mut w, p2);
        step5(&mut w, p1, p2);
    }

    // postlude
    if y_found {
        for c in w.iter_mut() {
            if *c == 'Y' {
                *c = 'y';
            }
        }
    }
    w.into_iter().collect()
}

fn step1b(w: &mut Vec<char>, p1: usize) {
    let Some(s) = longest(w, &["eed", "eedly", "ed", "edly", "ing", "ingly"]) else {
        return;
    };
    let k = w.len() - s.len();
    match s {
        "eed" | "eedly" => {
            if k >= p1 {
                replace_suffix(w, s.len(), "ee");
            }
        }
        _ => {
            if !w[..k].iter().any(|&c| is_v(c)) {
                return;
            }
            w.truncate(k);
            let dbl = ["bb", "dd", "ff", "gg", "mm", "nn", "pp", "rr", "tt"];
            if ends_with(w, "at") || ends_with(w, "bl") || ends_with(w, "iz") {
                w.push('e');
            } else if dbl.iter().any(|d| ends_with(w, d)) {
                w.pop();
            } else if w.len() == p1 && shortv(w, w.len()) {
                w.push('e');
            }
        }
    }
}

fn step2(w: &mut Vec<char>, p1: usize) {
    const L: &[&str] = &[
        "tional", "enci", "anci", "abli", "entli", "izer", "ization", "ational", "ation", "ator",
        "alism", "aliti", "alli", "fulness", "ousli", "ousness", "iveness", "iviti", "biliti",
        "bli", "ogi", "fulli", "lessli", "li",
    ];
    let Some(s) = longest(w, L) else { return };
    let k = w.len() - s.len();
    if k < p1 {
        return;
    }
    let rep = match s {
        "tional" => "tion",
        "enci" => "ence",
        "anci" => "ance",
        "abli" => "able",
        "entli" => "ent",
        "izer" | "ization" => "ize",
        "ational" | "ation" | "ator" => "ate",
        "alism" | "aliti" | "alli" => "al",
        "fulness" => "ful",
        "ousli" | "ousness" => "ous",
        "iveness" | "iviti" => "ive",
        "biliti" | "bli" => "ble",
        "ogi" if k >= 1 && w[k - 1] == 'l' => "og",
        "fulli" => "ful",
        "lessli" => "less",
        "li" if k >= 1 && is_valid_li(w[k - 1]) => "",
        _ => return,
    };
    replace_suffix(w, s.len(), rep);
}

fn step3(w: &mut Vec<char>, p1: usize, p2: usize) {
    const L: &[&str] = &[
        "tional", "ational", "alize", "icate", "iciti", "ical", "ful", "ness", "ative",
    ];
    let Some(s) = longest(w, L) else { return };
    let k = w.len() - s.len();
    if k < p1 {
        return;
    }
    let rep = match s {
        "tional" => "tion",
        "ational" => "ate",
        "alize" => "al",
        "icate" | "iciti" | "ical" => "ic",
        "ful" | "ness" => "",
        "ative" if k >= p2 => "",
        _ => return,
    };
    replace_suffix(w, s.len(), rep);
}

fn step4(w: &mut Vec<char>, p2: usize) {
    const L: &[&str] = &[
        "al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent", "ism",
        "ate", "iti", "ous", "ive", "ize", "ion",
    ];
    let Some(s) = longest(w, L) else { return };
    let k = w.len() - s.len();
    if k < p2 {
        return;
    }
    if s == "ion" {
        if k >= 1 && matches!(w[k - 1], 's' | 't') {
            w.truncate(k);
        }
    } else {
        w.truncate(k);
    }
}

fn step5(w: &mut Vec<char>, p1: usize, p2: usize) {
    let n = w.len();
    if n == 0 {
        return;
    }
    let k = n - 1;
    match w[k] {
        'e' if k >= p2 || (k >= p1 && !shortv(w, k)) => w.truncate(k),
        'l' if k >= p2 && k >= 1 && w[k - 1] == 'l' => w.truncate(k),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::stem;

    #[test]
    fn porter2_examples() {
        for (w, s) in [
            ("consign", "consign"),
            ("consigned", "consign"),
            ("consigning", "consign"),
            ("consignment", "consign"),
            ("generously", "generous"),
            ("generate", "generat"),
            ("communication", "communic"),
            ("hoped", "hope"),
            ("hopping", "hop"),
            ("cries", "cri"),
            ("ties", "tie"),
            ("gaps", "gap"),
            ("gas", "gas"),
            ("happy", "happi"),
            ("skies", "sky"),
            ("yellow", "yellow"),
            ("played", "play"),
            ("succeeding", "succeed"),
            ("knightly", "knight"),
        ] {
            assert_eq!(stem(w), s, "{w}");
        }
    }
}

//! Fitting text into a reply's size bounds: cuts counted as the model receives them (chars
//! of compact JSON), each marked so that the reader knows something was left out.
//!
//! Not here: the reply shapes and their bounds (`reply`).

use serde::Serialize;

/// How many chars `c` takes inside a JSON string (serde_json's escaping).
fn json_chars(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        _ => 1,
    }
}

/// `s` cut so that it takes at most `max` chars inside a JSON string, and whether it cut.
pub(super) fn fit(s: &str, max: usize) -> (String, bool) {
    let mut used = 0;
    for (i, c) in s.char_indices() {
        used += json_chars(c);
        if used > max {
            return (s[..i].to_string(), true);
        }
    }
    (s.to_string(), false)
}

/// The first line of `s`, cut to `max` chars with an ellipsis.
pub(super) fn one_line(s: &str, max: usize) -> String {
    let line = s
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    let more_lines = s.trim().lines().nth(1).is_some();
    if line.chars().count() <= max && !more_lines {
        return line.to_string();
    }
    let kept: String = line.chars().take(max.saturating_sub(1)).collect();
    format!("{kept}…")
}

/// Chars of `v` as compact JSON (what the model receives).
pub(super) fn compact_len<T: Serialize>(v: &T) -> usize {
    serde_json::to_string(v).map_or(0, |s| s.chars().count())
}

/// `s` cut to `max` bytes at a char boundary, and whether it cut.
pub(super) fn cut_bytes(s: &str, max: usize) -> (String, bool) {
    if s.len() <= max {
        return (s.to_string(), false);
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    (s[..cut].to_string(), true)
}

/// The first `max` chars of `s`, marked when cut.
pub(super) fn head_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let kept: String = s.chars().take(max).collect();
    format!("{kept}… [cut; the transcript has all of it]")
}

/// The last `max` chars of `s`, from a line start when one is near.
pub(super) fn tail_chars(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let tail: String = s.chars().skip(n - max).collect();
    match tail.find('\n') {
        Some(i) if i < tail.len() / 2 => format!("…{}", &tail[i..]),
        _ => format!("…{tail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_counts_json_escapes() {
        assert_eq!(fit("abc", 3), ("abc".into(), false));
        assert_eq!(fit("a\"c", 3), ("a\"".into(), true));
        assert_eq!(fit("a\"c", 2), ("a".into(), true));
        assert_eq!(fit("é€x", 2), ("é€".into(), true));
        let (s, cut) = fit("line\nline\n", 100);
        assert!(!cut);
        assert_eq!(serde_json::to_string(&s).unwrap().len() - 2, 12);
    }

    #[test]
    fn one_line_marks_what_it_left_out() {
        assert_eq!(one_line("short", 10), "short");
        assert_eq!(one_line("first\nsecond", 10), "first…");
        assert_eq!(one_line("abcdefghijkl", 5), "abcd…");
    }
}

//! The per-line regex an output read may filter by, compiled with bounds so a hostile
//! pattern cannot eat memory.
//!
//! Not here: applying it to lines (`ring`).

use regex::{Regex, RegexBuilder};

use super::OutputError;

/// Limit on a compiled filter (regex `size_limit`, and its lazy DFA cache).
pub const FILTER_SIZE_LIMIT: usize = 1024 * 1024;
/// How much of a pattern an error message quotes.
const QUOTED_PATTERN_CHARS: usize = 120;

/// Compiles a per-line output filter, bounded so a hostile pattern cannot eat memory.
pub fn compile_filter(pattern: &str) -> Result<Regex, OutputError> {
    if pattern.is_empty() {
        return Err(OutputError::EmptyFilter);
    }
    RegexBuilder::new(pattern)
        .size_limit(FILTER_SIZE_LIMIT)
        .dfa_size_limit(FILTER_SIZE_LIMIT)
        .build()
        .map_err(|err| match err {
            regex::Error::CompiledTooBig(limit) => OutputError::FilterTooLarge {
                pattern: quote_pattern(pattern),
                limit,
            },
            regex::Error::Syntax(reason) => OutputError::BadFilter {
                pattern: quote_pattern(pattern),
                reason,
            },
            other => OutputError::BadFilter {
                pattern: quote_pattern(pattern),
                reason: other.to_string(),
            },
        })
}

/// Shortens a pattern for an error message; the caller still has the whole of it.
fn quote_pattern(pattern: &str) -> String {
    match pattern.char_indices().nth(QUOTED_PATTERN_CHARS) {
        Some((cut, _)) => format!("{}…", &pattern[..cut]),
        None => pattern.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_regex_error_quotes_the_pattern_and_the_parse_error() {
        let message = compile_filter("(").unwrap_err().to_string();
        assert!(
            message.starts_with("filter `(` is not a valid regex: "),
            "{message}"
        );
        assert!(message.contains("unclosed group"), "{message}");
        assert!(message.contains("escape special characters"), "{message}");

        let empty = compile_filter("").unwrap_err();
        assert!(matches!(empty, OutputError::EmptyFilter));

        let huge = compile_filter(r"\w{1000}{1000}").unwrap_err();
        assert!(matches!(huge, OutputError::FilterTooLarge { .. }), "{huge}");
        assert!(huge.to_string().contains("1048576"), "{huge}");
    }
}

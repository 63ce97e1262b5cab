//! The ring buffer's behaviour, table by table: cursors across wrap-around, eviction,
//! filters, tails, paging.

use regex::Regex;

use super::*;
use crate::supervisor::output::compile_filter;

fn read_all(buf: &OutputBuffer) -> ReadResult {
    buf.read(&ReadRequest::default())
}

fn read_since(buf: &OutputBuffer, since: u64) -> ReadResult {
    buf.read(&ReadRequest {
        since: Some(since),
        ..ReadRequest::default()
    })
}

#[test]
fn cursors_stay_absolute_across_wrap_around() {
    let mut buf = OutputBuffer::new(16);
    buf.push("0123456789\n");
    buf.push("abcdefghij\n");
    assert_eq!(
        (buf.start_cursor(), buf.end_cursor(), buf.len()),
        (6, 22, 16)
    );

    let from_start = read_all(&buf);
    assert_eq!(from_start.text, "abcdefghij\n");
    assert_eq!(from_start.next_cursor, 22);

    let inside = read_since(&buf, 8);
    assert_eq!(inside.text, "89\nabcdefghij\n");
    assert_eq!(inside.dropped_bytes, 0);

    buf.push("xy\n");
    assert_eq!((buf.start_cursor(), buf.end_cursor()), (9, 25));
    let later = read_since(&buf, 22);
    assert_eq!(later.text, "xy\n");
    assert_eq!(later.next_cursor, 25);
    assert_eq!(read_since(&buf, 25).text, "");
}

#[test]
fn since_before_the_window_counts_evicted_bytes_as_dropped() {
    let mut buf = OutputBuffer::new(8);
    for line in ["ab1\n", "ab2\n", "ab3\n", "ab4\n", "ab5\n"] {
        buf.push(line);
    }
    assert_eq!(buf.start_cursor(), 12);

    let stale = read_since(&buf, 5);
    assert_eq!(stale.text, "ab4\nab5\n");
    assert_eq!(stale.dropped_bytes, 7);

    let from_start = read_all(&buf);
    assert_eq!(from_start.dropped_bytes, 12);
    assert_eq!(read_since(&buf, 12).dropped_bytes, 0);
}

#[test]
fn a_zero_capacity_buffer_keeps_nothing_and_counts_it_dropped() {
    let mut buf = OutputBuffer::new(0);
    buf.push("abc\n");
    let result = read_all(&buf);
    assert_eq!((result.text.as_str(), result.next_cursor), ("", 4));
    assert_eq!(result.dropped_bytes, 4);
}

#[test]
fn eviction_mid_line_reads_from_the_next_line_and_counts_the_cut_as_dropped() {
    let mut buf = OutputBuffer::new(10);
    buf.push("hello world\nok\n");
    assert_eq!(buf.start_cursor(), 5);

    let from_start = read_all(&buf);
    assert_eq!(from_start.text, "ok\n");
    assert_eq!(from_start.dropped_bytes, 12);

    assert_eq!(read_since(&buf, 2).dropped_bytes, 10);

    // A caller who already read up to the cut loses nothing.
    let at_cut = read_since(&buf, 5);
    assert_eq!(at_cut.text, " world\nok\n");
    assert_eq!(at_cut.dropped_bytes, 0);
}

#[test]
fn eviction_mid_character_reads_from_the_next_character() {
    let mut buf = OutputBuffer::new(5);
    buf.push("ééé");
    assert_eq!(buf.start_cursor(), 1);

    let result = read_all(&buf);
    assert_eq!(result.text, "éé");
    assert_eq!(result.dropped_bytes, 2);
    assert_eq!(result.next_cursor, 6);
}

#[test]
fn filter_matches_each_line_including_one_straddling_the_wrap_point() {
    let mut buf = OutputBuffer::new(32);
    // Cursors 0..32 fill the ring; "needle" then covers cursor 64, where it wraps.
    buf.push(&format!("{}\n", "x".repeat(31)));
    buf.push("zzzzzzz\n");
    buf.push("yyyyyyyyyyy\n");
    buf.push("0123456789needle789\n");
    assert_eq!(buf.start_cursor(), 40);
    let (a, b) = buf.buf.as_slices();
    let straddles = |part: &[u8]| !part.windows(6).any(|w| w == b"needle");
    assert!(
        !a.is_empty() && !b.is_empty(),
        "the ring should have wrapped"
    );
    assert!(
        straddles(a) && straddles(b),
        "the line should straddle the wrap"
    );

    let needle = compile_filter("^0123.*needle.*789$").unwrap();
    let result = buf.read(&ReadRequest {
        filter: Some(&needle),
        ..ReadRequest::default()
    });
    assert_eq!(result.text, "0123456789needle789\n");
    assert_eq!(result.matched_lines, 1);
    assert_eq!(result.next_cursor, buf.end_cursor());

    let ys = compile_filter("^y+$").unwrap();
    let result = buf.read(&ReadRequest {
        filter: Some(&ys),
        ..ReadRequest::default()
    });
    assert_eq!(result.text, "yyyyyyyyyyy\n");
}

#[test]
fn filter_skips_non_matching_lines_and_still_advances_the_cursor() {
    let mut buf = OutputBuffer::new(1024);
    buf.push("info: a\nerror: b\ninfo: c\n");
    let errors = compile_filter("^error").unwrap();
    let result = buf.read(&ReadRequest {
        filter: Some(&errors),
        include_partial: false,
        ..ReadRequest::default()
    });
    assert_eq!(result.text, "error: b\n");
    assert_eq!(result.matched_lines, 1);
    assert_eq!(result.next_cursor, buf.end_cursor());
    assert!(!result.truncated);
}

#[test]
fn tail_lines_returns_the_last_lines_with_and_without_a_filter() {
    let mut buf = OutputBuffer::new(1024);
    buf.push("1\n2\n3\n4\n5\n6");
    let last_two = |filter, include_partial| {
        buf.read(&ReadRequest {
            filter,
            tail_lines: Some(2),
            include_partial,
            ..ReadRequest::default()
        })
    };

    let result = last_two(None, false);
    assert_eq!(result.text, "4\n5\n");
    assert_eq!(result.next_cursor, 10);
    assert_eq!(result.matched_lines, 2);
    assert_eq!(last_two(None, true).text, "5\n6");

    let odd = compile_filter("[135]").unwrap();
    let result = last_two(Some(&odd), false);
    assert_eq!(result.text, "3\n5\n");
    assert_eq!(result.matched_lines, 2);

    let everything = buf.read(&ReadRequest {
        tail_lines: Some(100),
        ..ReadRequest::default()
    });
    assert_eq!(everything.text, "1\n2\n3\n4\n5\n6");
}

#[test]
fn tail_lines_over_max_bytes_keeps_the_newest_lines() {
    let mut buf = OutputBuffer::new(1024);
    buf.push("aaaa\nbbbb\ncccc\n");
    let tail = |max_bytes| {
        buf.read(&ReadRequest {
            tail_lines: Some(3),
            max_bytes,
            ..ReadRequest::default()
        })
    };

    let result = tail(12);
    assert_eq!(result.text, "bbbb\ncccc\n");
    assert!(result.truncated);
    assert_eq!(result.next_cursor, 15);

    let result = tail(4);
    assert_eq!(result.text, "ccc\n");
    assert!(result.truncated);
    assert_eq!(result.matched_lines, 1);
}

fn sample_text() -> String {
    let mut text = String::new();
    for i in 0..40 {
        match i % 5 {
            0 => text.push('\n'),
            1 => text.push_str(&format!("line {i} with é and 🦀\n")),
            2 => text.push_str(&format!("{}\n", "🦀é".repeat(i))),
            3 => text.push_str(&format!("error {i}\n")),
            _ => text.push_str(&format!("{}\n", "a".repeat(3 * i))),
        }
    }
    text.push_str("trailing é");
    text
}

fn page_through(buf: &OutputBuffer, filter: Option<&Regex>, max_bytes: usize) -> String {
    let mut since = 0;
    let mut pages = String::new();
    loop {
        let page = buf.read(&ReadRequest {
            since: Some(since),
            filter,
            max_bytes,
            ..ReadRequest::default()
        });
        assert!(page.text.len() <= max_bytes.max(4), "cap {max_bytes}");
        assert_eq!(page.dropped_bytes, 0);
        pages.push_str(&page.text);
        if !page.truncated {
            assert_eq!(page.next_cursor, buf.end_cursor());
            return pages;
        }
        assert!(
            page.next_cursor > since,
            "paging must progress at cap {max_bytes}"
        );
        since = page.next_cursor;
    }
}

#[test]
fn paging_with_max_bytes_reassembles_exactly_the_original_text() {
    let text = sample_text();
    // Pushed in odd pieces through a ring that has wrapped before.
    let mut buf = OutputBuffer::new(text.len() + 7);
    buf.push(&"z".repeat(text.len() / 2));
    let offset = buf.end_cursor();
    let mut rest = text.as_str();
    while !rest.is_empty() {
        let cut = floor_char_boundary(rest, 37);
        let cut = if cut == 0 { rest.len().min(4) } else { cut };
        buf.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    for max_bytes in [0, 1, 2, 3, 4, 5, 7, 16, 33, 100, 1000, usize::MAX] {
        let mut since = offset;
        let mut pages = String::new();
        loop {
            let page = buf.read(&ReadRequest {
                since: Some(since),
                max_bytes,
                ..ReadRequest::default()
            });
            assert!(page.text.len() <= max_bytes.max(4));
            pages.push_str(&page.text);
            if !page.truncated {
                break;
            }
            assert!(page.next_cursor > since);
            since = page.next_cursor;
        }
        assert_eq!(pages, text, "cap {max_bytes}");
    }
}

#[test]
fn paging_a_filtered_read_returns_every_matching_line_once() {
    let mut buf = OutputBuffer::new(1 << 16);
    let text = sample_text();
    buf.push(&text);
    let filter = compile_filter("é|error").unwrap();
    let expected: String = text
        .split_inclusive('\n')
        .filter(|line| filter.is_match(line.trim_end_matches('\n')))
        .collect();
    let longest = text.split_inclusive('\n').map(str::len).max().unwrap();
    for max_bytes in [longest, longest + 1, 200, usize::MAX] {
        assert_eq!(page_through(&buf, Some(&filter), max_bytes), expected);
    }
    for max_bytes in [1, 10, 64] {
        assert_eq!(page_through(&buf, None, max_bytes), text);
    }
}

#[test]
fn max_bytes_returns_whole_lines_then_cuts_a_first_line_that_does_not_fit() {
    let mut buf = OutputBuffer::new(1024);
    buf.push("abc\ndefgh\n");
    let read = |since, max_bytes| {
        buf.read(&ReadRequest {
            since: Some(since),
            max_bytes,
            ..ReadRequest::default()
        })
    };

    let first = read(0, 8);
    assert_eq!((first.text.as_str(), first.next_cursor), ("abc\n", 4));
    assert!(first.truncated);

    let cut = read(4, 4);
    assert_eq!((cut.text.as_str(), cut.next_cursor), ("defg", 8));
    assert!(cut.truncated);

    let rest = read(8, 4);
    assert_eq!((rest.text.as_str(), rest.next_cursor), ("h\n", 10));
    assert!(!rest.truncated);
}

#[test]
fn reading_is_idempotent_for_a_cursor() {
    let mut buf = OutputBuffer::new(64);
    buf.push(&sample_text());
    let filter = compile_filter("a").unwrap();
    let requests = [
        ReadRequest::default(),
        ReadRequest {
            since: Some(buf.start_cursor() + 3),
            filter: Some(&filter),
            max_bytes: 10,
            include_partial: false,
            ..ReadRequest::default()
        },
        ReadRequest {
            tail_lines: Some(2),
            max_bytes: 5,
            ..ReadRequest::default()
        },
    ];
    for req in &requests {
        assert_eq!(buf.read(req), buf.read(req));
    }
}

#[test]
fn a_partial_line_is_held_back_unless_include_partial() {
    let mut buf = OutputBuffer::new(1024);
    buf.push("done\nwork");
    let read = |since, include_partial| {
        buf.read(&ReadRequest {
            since: Some(since),
            include_partial,
            ..ReadRequest::default()
        })
    };

    let held = read(0, false);
    assert_eq!((held.text.as_str(), held.next_cursor), ("done\n", 5));
    let whole = read(0, true);
    assert_eq!((whole.text.as_str(), whole.next_cursor), ("done\nwork", 9));

    buf.push("ing\n");
    let read = |since| read_since(&buf, since).text;
    assert_eq!(read(5), "working\n");
    assert_eq!(read(9), "ing\n");
}

#[test]
fn lines_longer_than_max_line_are_split_across_pushes() {
    let mut buf = OutputBuffer::default();
    buf.push(&"a".repeat(MAX_LINE - 5));
    buf.push(&"a".repeat(15));
    buf.push("\n");
    buf.push(&format!("{}\n", "b".repeat(MAX_LINE)));
    buf.push(&format!("{}é\n", "c".repeat(MAX_LINE - 1)));

    let text = read_all(&buf).text;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let expected = [
        format!("{}\n", "a".repeat(MAX_LINE)),
        format!("{}\n", "a".repeat(10)),
        format!("{}\n", "b".repeat(MAX_LINE)),
        format!("{}\n", "c".repeat(MAX_LINE - 1)),
        "é\n".to_owned(),
    ];
    assert_eq!(lines, expected);
    assert_eq!(buf.end_cursor(), text.len() as u64);
}

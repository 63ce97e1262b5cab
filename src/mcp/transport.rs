//! The server's stdio transport: one JSON-RPC message per line, and an answer for every
//! line rmcp would drop. A line that is not JSON (invalid, truncated, not UTF-8) gets a
//! parse error (-32700, id null); JSON that is not a message gets an invalid-request
//! error (-32600, with the request's id when it has one); a line over `MAX_LINE_BYTES`
//! is refused the same way and skipped. The server stays up through all of them.
//!
//! Node's `JSON.stringify` writes a string cut mid-emoji as a lone surrogate escape
//! (`"\ud83d"`), which serde_json rejects: such escapes are read as U+FFFD instead.
//!
//! rmcp's replies and ours go through one writer, a whole line under one lock, so they
//! are never interleaved mid-line.

use std::io;
use std::sync::Arc;

use rmcp::RoleServer;
use rmcp::model::{ClientRequest, JsonRpcMessage};
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Longest line accepted, in bytes.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const INVALID_PARAMS: i64 = -32602;

type Writer = Arc<Mutex<Box<dyn AsyncWrite + Send + Unpin>>>;

/// Lines in from `R`, messages out to a shared writer.
pub struct LineTransport<R> {
    reader: LineReader<BufReader<R>>,
    writer: Writer,
    /// Cancelled when the input ends.
    eof: CancellationToken,
}

impl LineTransport<super::stdio::Input> {
    /// The transport over this process's stdin and stdout (`stdio`).
    pub fn stdio(eof: CancellationToken) -> Self {
        Self::new(super::stdio::input(), super::stdio::output(), eof)
    }
}

impl<R: tokio::io::AsyncRead + Send + Unpin + 'static> LineTransport<R> {
    pub fn new(
        reader: R,
        writer: impl AsyncWrite + Send + Unpin + 'static,
        eof: CancellationToken,
    ) -> Self {
        LineTransport {
            reader: LineReader::new(BufReader::new(reader), MAX_LINE_BYTES),
            writer: Arc::new(Mutex::new(Box::new(writer))),
            eof,
        }
    }
}

/// Answers a malformed line from a task of its own, so that a dropped `receive` cannot
/// cut the reply mid-line. A failed write means the client is gone; the next read sees
/// the end.
fn reply_error(writer: &Writer, id: Value, code: i64, message: String) {
    tracing::warn!(code, %message, "answered a malformed JSON-RPC line");
    let reply = json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}});
    let writer = Arc::clone(writer);
    tokio::spawn(async move {
        let _ = write_line(&writer, reply.to_string()).await;
    });
}

impl<R: tokio::io::AsyncRead + Send + Unpin + 'static> Transport<RoleServer> for LineTransport<R> {
    type Error = io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let writer = Arc::clone(&self.writer);
        async move {
            let line = serde_json::to_string(&item).map_err(io::Error::other)?;
            write_line(&writer, line).await
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            // Cancel-safe: rmcp polls `receive` in a select! and may drop it; a partly
            // read line stays in the reader.
            let line = match self.reader.next_line().await {
                Ok(Line::Complete(bytes)) => bytes,
                Ok(Line::TooLong(len)) => {
                    let message = format!(
                        "line of {len}+ bytes refused: the limit is {MAX_LINE_BYTES} bytes per JSON-RPC message; send smaller arguments"
                    );
                    reply_error(&self.writer, Value::Null, INVALID_REQUEST, message);
                    continue;
                }
                Ok(Line::End) | Err(_) => {
                    self.eof.cancel();
                    return None;
                }
            };
            match decode(&line) {
                Decoded::Message(m) => return Some(*m),
                Decoded::Skip => continue,
                Decoded::Error { id, code, message } => {
                    reply_error(&self.writer, id, code, message);
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.writer.lock().await.flush().await
    }
}

/// Writes `line` and a newline as one unit, then flushes.
async fn write_line(writer: &Writer, mut line: String) -> io::Result<()> {
    line.push('\n');
    let mut w = writer.lock().await;
    w.write_all(line.as_bytes()).await?;
    w.flush().await
}

enum Line {
    Complete(Vec<u8>),
    /// Longer than the bound (its length so far); the rest of it was skipped.
    TooLong(usize),
    End,
}

/// Lines of at most `max` bytes. The line being read lives in the reader, not in the
/// future that reads it, so dropping `next_line` mid-line loses nothing.
struct LineReader<R> {
    inner: R,
    max: usize,
    line: Vec<u8>,
    /// Bytes of the current line so far once it passed `max` (0: within the bound).
    too_long: usize,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    fn new(inner: R, max: usize) -> Self {
        LineReader {
            inner,
            max,
            line: Vec::new(),
            too_long: 0,
        }
    }

    /// The next line without its newline. The only await is `fill_buf`; what it
    /// returns is copied into `self` and consumed before the next one.
    async fn next_line(&mut self) -> io::Result<Line> {
        loop {
            let buf = self.inner.fill_buf().await?;
            if buf.is_empty() {
                let line = std::mem::take(&mut self.line);
                return Ok(match std::mem::take(&mut self.too_long) {
                    0 if line.is_empty() => Line::End,
                    0 => Line::Complete(line),
                    n => Line::TooLong(n),
                });
            }
            let (chunk, used) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], i + 1),
                None => (buf, buf.len()),
            };
            let ends = used > chunk.len();
            if self.too_long > 0 || self.line.len() + chunk.len() > self.max {
                self.too_long = self.too_long.max(self.line.len()) + chunk.len();
                self.line = Vec::new();
            } else {
                self.line.extend_from_slice(chunk);
            }
            self.inner.consume(used);
            if ends {
                let line = std::mem::take(&mut self.line);
                return Ok(match std::mem::take(&mut self.too_long) {
                    0 => Line::Complete(line),
                    n => Line::TooLong(n),
                });
            }
        }
    }
}

enum Decoded {
    Message(Box<RxJsonRpcMessage<RoleServer>>),
    /// Blank lines and notifications rmcp would ignore: nothing to answer.
    Skip,
    Error {
        id: Value,
        code: i64,
        message: String,
    },
}

fn decode(line: &[u8]) -> Decoded {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
    let Ok(text) = std::str::from_utf8(line) else {
        return parse_error("the line is not valid UTF-8".into());
    };
    if text.trim().is_empty() {
        return Decoded::Skip;
    }
    let values = json_values(line);
    let most = most_values(line.len());
    if values > most {
        // Each JSON value costs the server about a hundred bytes in every form a request
        // takes on its way to a tool, whatever its size on the line.
        #[derive(serde::Deserialize)]
        struct IdOnly {
            id: Option<Value>,
        }
        let id = serde_json::from_str::<IdOnly>(text)
            .ok()
            .and_then(|m| m.id)
            .filter(|id| id.is_string() || id.is_number());
        return Decoded::Error {
            id: id.unwrap_or(Value::Null),
            code: INVALID_REQUEST,
            message: format!(
                "the message holds about {values} JSON values, more than the {most} a message of {} bytes may; send fewer items (e.g. agent_wait on fewer agent_ids at a time)",
                line.len()
            ),
        };
    }
    // The usual case, straight from the text: each string is copied once, not once for
    // a JSON value tree and again for the protocol's types.
    if let Ok(message) = serde_json::from_str::<RxJsonRpcMessage<RoleServer>>(text)
        && !is_unparsed_tool_call(&message)
    {
        return Decoded::Message(Box::new(message));
    }
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(first) => match serde_json::from_str(&replace_lone_surrogates(text)) {
            Ok(v) => v,
            Err(_) => return parse_error(format!("the line is not valid JSON: {first}")),
        },
    };
    let id = match value.get("id") {
        Some(id @ (Value::String(_) | Value::Number(_))) => Some(id.clone()),
        _ => None,
    };
    let is_notification =
        value.get("id").is_none() && value.get("method").is_some_and(Value::is_string);
    // rmcp reads a tools/call it cannot parse as some other method (-32601): the method
    // is known, its params are what is wrong.
    if let Some(message) = bad_tool_call(&value)
        && !is_notification
    {
        return Decoded::Error {
            id: id.unwrap_or(Value::Null),
            code: INVALID_PARAMS,
            message,
        };
    }
    match serde_json::from_value::<RxJsonRpcMessage<RoleServer>>(value) {
        Ok(m) => Decoded::Message(Box::new(m)),
        // JSON-RPC never answers a notification; rmcp drops the ones it does not know.
        Err(_) if is_notification => Decoded::Skip,
        Err(e) => Decoded::Error {
            id: id.unwrap_or(Value::Null),
            code: INVALID_REQUEST,
            message: format!(
                "not a valid JSON-RPC 2.0 message ({e}); send one object with \"jsonrpc\": \"2.0\", a \"method\" and, for a request, an \"id\""
            ),
        },
    }
}

/// A `tools/call` rmcp could only read as a method of its own (its params are wrong).
fn is_unparsed_tool_call(message: &RxJsonRpcMessage<RoleServer>) -> bool {
    matches!(
        message,
        JsonRpcMessage::Request(r)
            if matches!(&r.request, ClientRequest::CustomRequest(c) if c.method == "tools/call")
    )
}

/// What is wrong with the params of a `tools/call` request, if anything rmcp would not
/// read as one.
fn bad_tool_call(value: &Value) -> Option<String> {
    if value.get("method").and_then(Value::as_str) != Some("tools/call") {
        return None;
    }
    let params = value.get("params");
    let problem = match params {
        Some(Value::Object(p)) if !p.get("name").is_some_and(Value::is_string) => {
            "params.name must be the tool's name (a string)"
        }
        Some(Value::Object(p))
            if p.get("arguments")
                .is_some_and(|a| !a.is_object() && !a.is_null()) =>
        {
            "params.arguments must be an object of the tool's parameters by name"
        }
        Some(Value::Object(_)) => return None,
        _ => "params must be an object with the tool's name and its arguments",
    };
    Some(format!(
        "invalid tools/call: {problem}, e.g. {{\"name\": \"agent_status\", \"arguments\": {{\"agent_id\": \"a-7f3k2\"}}}}"
    ))
}

/// The most JSON values one message of `bytes` may hold: plenty for any real request,
/// and few enough that the forms a request takes in memory (JSON value tree, the
/// protocol's types, the tool's parameters) stay within a few times the line.
fn most_values(bytes: usize) -> usize {
    (bytes / 128).max(10_000)
}

/// An upper bound on the JSON values in `line`: one, plus one per `,` `[` `{` outside
/// strings (cheap: no allocation, one pass).
fn json_values(line: &[u8]) -> usize {
    let mut count = 1;
    let mut in_string = false;
    let mut escaped = false;
    for &b in line {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b',' | b'[' | b'{' => count += 1,
                _ => {}
            }
        }
    }
    count
}

fn parse_error(message: String) -> Decoded {
    Decoded::Error {
        id: Value::Null,
        code: PARSE_ERROR,
        message,
    }
}

/// `text` with every `\uXXXX` escape of an unpaired UTF-16 surrogate replaced by
/// `\ufffd`; paired surrogates and escaped backslashes are left alone.
fn replace_lone_surrogates(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        let Some(unit) = escaped_unit(b, i) else {
            i += 2; // `\\`, `\"`, `\n`...: skip the escaped character.
            continue;
        };
        let high = (0xD800..0xDC00).contains(&unit);
        let low = (0xDC00..0xE000).contains(&unit);
        if high && escaped_unit(b, i + 6).is_some_and(|u| (0xDC00..0xE000).contains(&u)) {
            i += 12;
        } else if high || low {
            out.push_str(&text[copied..i]);
            out.push_str("\\ufffd");
            i += 6;
            copied = i;
        } else {
            i += 6;
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// The code unit of a `\uXXXX` escape starting at `at`, if there is one.
fn escaped_unit(b: &[u8], at: usize) -> Option<u32> {
    let esc = b.get(at..at + 6)?;
    if esc[0] != b'\\' || esc[1] != b'u' {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(&esc[2..]).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_counted_outside_strings_only() {
        assert_eq!(json_values(br#"{"a":[1,2,3]}"#), 5);
        assert_eq!(json_values(br#"{"a":"x,[{\",y"}"#), 2);
        assert_eq!(most_values(1000), 10_000);
        assert_eq!(most_values(16 << 20), 131_072);
    }

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        let fixed = replace_lone_surrogates(
            r#"{"a":"cut \ud83d","b":"\ude00 x","c":"ok \ud83d\ude00","d":"\\ud83d"}"#,
        );
        let v: Value = serde_json::from_str(&fixed).unwrap();
        assert_eq!(v["a"], "cut \u{fffd}");
        assert_eq!(v["b"], "\u{fffd} x");
        assert_eq!(v["c"], "ok 😀");
        assert_eq!(v["d"], "\\ud83d");
    }

    #[tokio::test]
    async fn a_read_dropped_mid_line_loses_nothing() {
        use tokio::io::AsyncWriteExt;
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut r = LineReader::new(BufReader::new(rx), 1024);
        tx.write_all(b"{\"first half").await.unwrap();
        // rmcp's select! drops `receive` like this timeout does.
        let cut = tokio::time::timeout(std::time::Duration::from_millis(50), r.next_line()).await;
        assert!(cut.is_err(), "no line yet");
        tx.write_all(b" and the rest\"}\n").await.unwrap();
        match r.next_line().await.unwrap() {
            Line::Complete(l) => assert_eq!(l, b"{\"first half and the rest\"}"),
            _ => panic!("no complete line"),
        }
    }

    #[tokio::test]
    async fn lines_past_the_bound_are_skipped_whole() {
        let input = b"short\nxxxxxxxxxxxxxxxxxxxx\nnext\nlast".to_vec();
        let mut r = LineReader::new(BufReader::with_capacity(4, &input[..]), 8);
        let mut got = Vec::new();
        loop {
            match r.next_line().await.unwrap() {
                Line::Complete(l) => got.push(String::from_utf8(l).unwrap()),
                Line::TooLong(n) => got.push(format!("too long {n}")),
                Line::End => break,
            }
        }
        assert_eq!(got, ["short", "too long 20", "next", "last"]);
    }
}

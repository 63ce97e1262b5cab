//! The providers' prompt caches, simulated as documented: what a request reads from
//! and writes to them, in input tokens.

use std::time::Duration;

use serde_json::Value;

use super::check::Rejected;
use super::{Api, FakeState};

/// Input tokens read from and written to the prompt cache by one request.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct CacheUse {
    /// Input tokens of the whole prompt, when counted block by block (Anthropic); else
    /// a quarter of the request body is used.
    pub(super) prompt: Option<u64>,
    pub(super) read: u64,
    pub(super) write: u64,
}

/// How long a prompt cache entry lives (refreshed by every hit), and the fewest tokens a
/// prefix needs to be cached, as the Messages API documents.
const CACHE_LIFETIME: Duration = Duration::from_secs(300);
const CACHE_MIN_TOKENS: u64 = 1024;
/// A breakpoint finds an earlier entry at most this many blocks back.
const CACHE_LOOKBACK_BLOCKS: usize = 20;
const MAX_BREAKPOINTS: usize = 4;

/// The Messages API's prompt caching, simulated as documented: the prompt is the sequence
/// of blocks tools → system → messages; a `cache_control` block is a breakpoint (at most
/// 4; a top-level `cache_control` puts one on the last block); each breakpoint reads the
/// longest cached prefix ending at it or up to 20 blocks before it, and writes its own
/// prefix when that has at least 1,024 tokens. Entries live 5 minutes from their last
/// use. Tokens are a quarter of each block's JSON (tools, system, message content); the
/// request's other fields (model, max_tokens, ...) are not input.
pub(super) fn cached(
    state: &mut FakeState,
    (api, body): (Api, Value),
) -> Result<((Api, Value), CacheUse), Rejected> {
    if api == Api::OpenAi {
        let read = openai_cached(state, &body);
        return Ok((
            (api, body),
            CacheUse {
                prompt: None,
                read,
                write: 0,
            },
        ));
    }
    let mut blocks: Vec<&Value> = Vec::new();
    blocks.extend(body["tools"].as_array().into_iter().flatten());
    blocks.extend(body["system"].as_array().into_iter().flatten());
    for message in body["messages"].as_array().into_iter().flatten() {
        blocks.extend(message["content"].as_array().into_iter().flatten());
    }
    let mut breakpoints: Vec<usize> = (0..blocks.len())
        .filter(|&i| blocks[i].get("cache_control").is_some())
        .collect();
    if body.get("cache_control").is_some() && !blocks.is_empty() {
        breakpoints.push(blocks.len() - 1);
        breakpoints.dedup();
    }
    if breakpoints.len() > MAX_BREAKPOINTS {
        return Err(Rejected {
            api,
            code: 400,
            error_type: "invalid_request_error",
            message: format!(
                "A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {}.",
                breakpoints.len()
            ),
            retry_after: None,
        });
    }
    // The identity of each prefix (the model's too), and its tokens.
    let mut hashes = Vec::with_capacity(blocks.len());
    let mut tokens = Vec::with_capacity(blocks.len());
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&body["model"].to_string(), &mut hasher);
    let mut sum = 0u64;
    for block in &blocks {
        let mut plain = (*block).clone();
        if let Some(obj) = plain.as_object_mut() {
            obj.remove("cache_control");
        }
        let text = plain.to_string();
        std::hash::Hash::hash(&text, &mut hasher);
        hashes.push(std::hash::Hasher::finish(&hasher));
        sum += text.len() as u64 / 4;
        tokens.push(sum);
    }
    let now = std::time::Instant::now();
    state.cache.retain(|_, expires| *expires > now);
    let hit = breakpoints
        .iter()
        .filter_map(|&b| {
            (b.saturating_sub(CACHE_LOOKBACK_BLOCKS - 1)..=b)
                .rev()
                .find(|&j| state.cache.contains_key(&hashes[j]))
        })
        .max();
    let read = hit.map_or(0, |j| tokens[j]);
    if let Some(j) = hit {
        state.cache.insert(hashes[j], now + CACHE_LIFETIME);
    }
    let mut written_to = read;
    for &b in &breakpoints {
        if tokens[b] >= CACHE_MIN_TOKENS {
            state.cache.insert(hashes[b], now + CACHE_LIFETIME);
            written_to = written_to.max(tokens[b]);
        }
    }
    Ok((
        (api, body),
        CacheUse {
            prompt: Some(sum),
            read,
            write: written_to - read,
        },
    ))
}

/// OpenAI's automatic prompt caching, simulated: every prompt prefix of at least 1,024
/// tokens (by whole messages) is cached for 5 minutes, per model and `prompt_cache_key`;
/// a request reads the longest cached prefix, in 128-token steps, as `cached_tokens`.
fn openai_cached(state: &mut FakeState, body: &Value) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&("openai", body["model"].to_string()), &mut hasher);
    std::hash::Hash::hash(&body["prompt_cache_key"].to_string(), &mut hasher);
    std::hash::Hash::hash(&body["tools"].to_string(), &mut hasher);
    let now = std::time::Instant::now();
    state.cache.retain(|_, expires| *expires > now);
    let mut tokens = body["tools"].to_string().len() as u64 / 4;
    let mut read = 0;
    for message in body["messages"].as_array().into_iter().flatten() {
        let text = message.to_string();
        std::hash::Hash::hash(&text, &mut hasher);
        tokens += text.len() as u64 / 4;
        let hash = std::hash::Hasher::finish(&hasher);
        if state.cache.contains_key(&hash) {
            read = tokens;
        }
        if tokens >= CACHE_MIN_TOKENS {
            state.cache.insert(hash, now + CACHE_LIFETIME);
        }
    }
    read / 128 * 128
}

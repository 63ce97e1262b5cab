//! Per-provider admission: how many agents may run against one provider at once
//! (`[providers.NAME] max_concurrent`), and holding new starts on a provider that
//! throttled (a worker's `retry` event for an HTTP 429/529 says how long).
//!
//! Not here: the server-wide `max_concurrent` and the queue itself (`manager`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bg_agent_worker::config::Config;

/// Longest hold one throttling answer can put on a provider.
const MAX_HOLD: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
pub struct Admission {
    caps: HashMap<String, usize>,
    /// The provider of every agent holding a slot (starting or running), by agent id.
    holders: HashMap<String, String>,
    held_until: HashMap<String, Instant>,
}

impl Admission {
    pub fn new(config: &Config) -> Admission {
        Admission {
            caps: config
                .providers
                .iter()
                .filter_map(|(name, p)| p.max_concurrent.map(|n| (name.clone(), n)))
                .collect(),
            ..Default::default()
        }
    }

    /// Why an agent on `provider` cannot start now; `None` when it can.
    pub fn blocked(&self, provider: &str, now: Instant) -> Option<String> {
        if let Some(until) = self.held_until.get(provider)
            && *until > now
        {
            return Some(format!(
                "provider `{provider}` throttled (HTTP 429/529); new starts on it are held for {:.1} s more",
                (*until - now).as_secs_f64()
            ));
        }
        let cap = *self.caps.get(provider)?;
        let running = self.holders.values().filter(|p| *p == provider).count();
        (running >= cap).then(|| {
            format!(
                "{running} agents are running on provider `{provider}` ([providers.{provider}] max_concurrent = {cap})"
            )
        })
    }

    /// Agent `id` takes a slot on `provider`.
    pub fn take(&mut self, id: &str, provider: &str) {
        self.holders.insert(id.to_string(), provider.to_string());
    }

    /// Agent `id` gives its slot back (a no-op when it held none).
    pub fn give_back(&mut self, id: &str) {
        self.holders.remove(id);
    }

    /// Holds new starts on `provider` for `wait` (a retry-after), capped.
    pub fn hold(&mut self, provider: &str, wait: Duration, now: Instant) {
        let until = now + wait.min(MAX_HOLD);
        let held = self.held_until.entry(provider.to_string()).or_insert(until);
        *held = (*held).max(until);
    }

    /// When the earliest hold still in force ends.
    pub fn next_release(&self, now: Instant) -> Option<Instant> {
        self.held_until
            .values()
            .filter(|u| **u > now)
            .min()
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bg_agent_worker::config::ConfigSource;

    fn admission(extra: &str) -> Admission {
        let config = Config::from_layers(Some(extra), ConfigSource::Builtin).unwrap();
        Admission::new(&config)
    }

    #[test]
    fn a_provider_cap_blocks_past_it_and_frees_on_give_back() {
        let mut a = admission("[providers.ollama]\nmax_concurrent = 2\n");
        let now = Instant::now();
        a.take("a1", "ollama");
        assert_eq!(a.blocked("ollama", now), None);
        a.take("a2", "ollama");
        let why = a.blocked("ollama", now).unwrap();
        assert!(
            why.contains("[providers.ollama] max_concurrent = 2"),
            "{why}"
        );
        assert_eq!(a.blocked("anthropic", now), None, "no cap there");
        a.give_back("a1");
        assert_eq!(a.blocked("ollama", now), None);
    }

    #[test]
    fn a_hold_blocks_until_it_ends_and_is_capped() {
        let mut a = admission("");
        let now = Instant::now();
        a.hold("anthropic", Duration::from_secs(2), now);
        assert!(a.blocked("anthropic", now).unwrap().contains("throttled"));
        assert_eq!(a.next_release(now), Some(now + Duration::from_secs(2)));
        assert_eq!(a.blocked("anthropic", now + Duration::from_secs(2)), None);
        a.hold("openai", Duration::from_secs(100_000), now);
        assert_eq!(a.next_release(now), Some(now + Duration::from_secs(2)));
        assert!(a.blocked("openai", now + MAX_HOLD).is_none());
    }
}

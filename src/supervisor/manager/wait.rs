//! Waiting without polling: for agents to end (`agent_wait`), for a status change, for
//! new output; the ids waited on are kept from eviction until the wait returns.
//!
//! Not here: what a wait returns (`view`).

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::supervisor::registry::Registry;
use crate::supervisor::view::{OutputPage, StatusView, WaitView};

use super::{Inner, Manager, ManagerError, OutputQuery, compiled_filter};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum WaitMode {
    Any,
    All,
}

impl Manager {
    /// The status once the agent has ended, or after `wait` (whichever first).
    pub async fn wait_status(&self, id: &str, wait: Duration) -> Result<StatusView, ManagerError> {
        let ids = [id.to_string()];
        self.wait(&ids, WaitMode::All, wait).await?;
        self.status(id)
    }

    /// Like `output`, but first waits up to `wait` for output past `since` (or the end).
    pub async fn wait_output(
        &self,
        id: &str,
        q: &OutputQuery,
        wait: Duration,
    ) -> Result<OutputPage, ManagerError> {
        // Compiled once for the whole wait, not on every wake-up.
        let filter = compiled_filter(q)?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut rx = {
            let reg = self.inner.lock();
            self.inner.get(&reg, id)?.io.output_seq.subscribe()
        };
        loop {
            let page = self.read_output(id, q, filter.as_ref())?;
            let since = q.since.unwrap_or(0);
            if page.status.is_terminal() || page.next_cursor > since || !page.text.is_empty() {
                return Ok(page);
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return self.read_output(id, q, filter.as_ref()) },
                _ = tokio::time::sleep_until(deadline) => return Ok(page),
            }
        }
    }

    /// Waits until any or all of `ids` have ended, or `wait` passes. Unknown ids are an
    /// error before any waiting. Callers outside the supervisor use the checked door,
    /// `wait_agents`.
    pub(crate) async fn wait(
        &self,
        ids: &[String],
        mode: WaitMode,
        wait: Duration,
    ) -> Result<WaitView, ManagerError> {
        if ids.is_empty() {
            return Err(ManagerError::NoIds);
        }
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + wait;
        let mut rx = self.inner.changed.subscribe();
        // While this wait is pending its agents are not evicted (retained_agents), so
        // an end it is about to report cannot turn into "unknown agent".
        {
            let mut reg = self.inner.lock();
            for id in ids {
                self.inner.get(&reg, id)?;
            }
            reg.watch(ids);
        }
        let _unwatch = Unwatch {
            inner: &self.inner,
            ids,
        };
        // The ids not yet seen ended. A wait on many agents wakes at each change of any
        // agent: views are built for the reply only, and `All` looks at its open ids from
        // the back only until one still runs, so a wake costs O(1), not O(N).
        let mut open: Vec<&String> = ids.iter().collect();
        loop {
            rx.borrow_and_update();
            {
                let reg = self.inner.lock();
                let ended = |id: &str| -> Result<bool, ManagerError> {
                    Ok(self.inner.get(&reg, id)?.status().is_terminal())
                };
                let done = match mode {
                    WaitMode::Any => {
                        let mut any = false;
                        for id in ids {
                            any |= ended(id)?;
                        }
                        any
                    }
                    WaitMode::All => {
                        while let Some(id) = open.last() {
                            if !ended(id)? {
                                break;
                            }
                            open.pop();
                        }
                        open.is_empty()
                    }
                };
                if done || tokio::time::Instant::now() >= deadline {
                    return self.wait_view(&reg, ids, done, started);
                }
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return Err(ManagerError::ShuttingDown) },
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// What a wait on `ids` returns now.
    fn wait_view(
        &self,
        reg: &Registry,
        ids: &[String],
        done: bool,
        started: Instant,
    ) -> Result<WaitView, ManagerError> {
        let mut ended = Vec::new();
        let mut running = Vec::new();
        let mut agents = Vec::new();
        for id in ids {
            let rec = self.inner.get(reg, id)?;
            if rec.status().is_terminal() {
                ended.push(id.clone());
            } else {
                running.push(id.clone());
            }
            agents.push(self.inner.status_view(reg, rec));
        }
        Ok(WaitView {
            done,
            ended,
            still_running: running,
            agents,
            waited_seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// Ends a wait's watch on its ids when the wait returns (or is dropped).
struct Unwatch<'a> {
    inner: &'a Inner,
    ids: &'a [String],
}

impl Drop for Unwatch<'_> {
    fn drop(&mut self) {
        self.inner.lock().unwatch(self.ids);
    }
}

//! A channel to one thread that is woken at once only for urgent messages: the others
//! wait in the queue until the receiver is awake anyway, and then for up to a delay, so
//! it takes them in batches. The transcript writer (`transcript`) gets one line per
//! streamed delta of every running agent; with a wake-up per line, at 1,000 agents the
//! cross-thread wake-ups (futex_wake, the writer's context switches) were about a sixth
//! of the server's CPU time.
//!
//! Senders never block on the receiver, only on the queue's lock for a push. A receiver
//! dropped (its thread ended, or panicked) makes every later send fail with the message
//! given back.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The sending side; clones send to the same receiver.
pub(super) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving side, for one thread.
pub(super) struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// How long a batch that holds no urgent message waits for more to join it.
    gather: Duration,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    wake: Condvar,
}

struct State<T> {
    queue: Vec<T>,
    /// An urgent message is queued: the receiver takes the batch without gathering.
    urgent: bool,
    /// The receiver waits with nothing queued: the next message, urgent or not, wakes it.
    idle: bool,
    receiver_gone: bool,
}

/// A channel whose batches of non-urgent messages gather for up to `gather`.
pub(super) fn channel<T>(gather: Duration) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: Vec::new(),
            urgent: false,
            idle: false,
            receiver_gone: false,
        }),
        wake: Condvar::new(),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared, gather },
    )
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("batching::Sender")
    }
}

impl<T> Sender<T> {
    /// Queues `msg`; the receiver is woken now when `urgent` (or when it waits on an
    /// empty queue), else it takes `msg` with the next batch. Gives `msg` back when the
    /// receiver is gone.
    pub(super) fn send(&self, msg: T, urgent: bool) -> Result<(), T> {
        let mut state = self.shared.lock();
        if state.receiver_gone {
            return Err(msg);
        }
        state.queue.push(msg);
        state.urgent |= urgent;
        if urgent || state.idle {
            state.idle = false;
            self.shared.wake.notify_one();
        }
        Ok(())
    }
}

impl<T> Receiver<T> {
    /// Every message queued, oldest first, once there is one: waits up to `timeout` for
    /// the first (empty on a timeout), then, unless an urgent one is among them, up to
    /// the gathering delay for others to join.
    pub(super) fn recv_batch(&self, timeout: Duration) -> Vec<T> {
        let mut state = self.shared.lock();
        let deadline = Instant::now() + timeout;
        while state.queue.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Vec::new();
            }
            state.idle = true;
            state = self.wait(state, left);
            state.idle = false;
        }
        let until = Instant::now() + self.gather;
        while !state.urgent {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self.wait(state, left);
        }
        state.urgent = false;
        std::mem::take(&mut state.queue)
    }

    fn wait<'a>(
        &self,
        state: MutexGuard<'a, State<T>>,
        up_to: Duration,
    ) -> MutexGuard<'a, State<T>> {
        match self.shared.wake.wait_timeout(state, up_to) {
            Ok((state, _)) => state,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }
}

impl<T> Drop for Receiver<T> {
    /// Later sends fail; what is queued is dropped.
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiver_gone = true;
        state.queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_urgent_message_ends_the_gathering_and_order_is_kept() {
        let (tx, rx) = channel::<u32>(Duration::from_secs(3600));
        tx.send(1, false).unwrap();
        tx.send(2, false).unwrap();
        tx.send(3, true).unwrap();
        // Gathering for an hour would hang this test: the urgent message ends it.
        assert_eq!(rx.recv_batch(Duration::from_secs(3600)), vec![1, 2, 3]);
    }

    #[test]
    fn lines_alone_are_taken_after_the_gathering_delay() {
        let (tx, rx) = channel::<u32>(Duration::from_millis(20));
        tx.send(7, false).unwrap();
        assert_eq!(rx.recv_batch(Duration::from_secs(3600)), vec![7]);
        assert_eq!(rx.recv_batch(Duration::from_millis(1)), Vec::<u32>::new());
    }

    #[test]
    fn a_message_wakes_a_receiver_waiting_on_an_empty_queue() {
        let (tx, rx) = channel::<u32>(Duration::from_millis(1));
        let receiver = std::thread::spawn(move || rx.recv_batch(Duration::from_secs(3600)));
        std::thread::sleep(Duration::from_millis(50));
        tx.send(5, false).unwrap();
        assert_eq!(receiver.join().unwrap(), vec![5]);
    }

    #[test]
    fn sends_fail_with_their_message_once_the_receiver_is_gone() {
        let (tx, rx) = channel::<u32>(Duration::from_millis(1));
        drop(rx);
        assert_eq!(tx.send(9, true), Err(9));
    }
}

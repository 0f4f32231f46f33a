//! Where a log line goes: a step's stdout/stderr is read line by line ([`capture`]), masked,
//! numbered and stored in batches; every stored batch is also broadcast in memory through the
//! [`LogHub`]. Followers ([`follow`]) read the backlog from the store, then take batches from the
//! broadcast; a follower that falls behind the broadcast catches up from the store, so a slow
//! follower never holds up the build or another follower. [`sse`] turns a follow into
//! Server-Sent Events.

pub mod capture;
pub mod follow;
pub mod sse;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, watch};

use crate::store::LogLine;

/// One stored batch, shared by every follower.
pub type Batch = Arc<Lines>;

/// Consecutive log lines, and their Server-Sent Events text rendered once for every follower
/// that sends them (a thousand followers of one build must not each re-encode every line).
#[derive(Debug, Default)]
pub struct Lines {
    lines: Vec<LogLine>,
    sse: std::sync::OnceLock<bytes::Bytes>,
}

impl Lines {
    pub fn new(lines: Vec<LogLine>) -> Lines {
        Lines { lines, sse: std::sync::OnceLock::new() }
    }

    /// The lines as `event:`/`id:`/`data:` records.
    pub fn sse(&self) -> bytes::Bytes {
        self.sse.get_or_init(|| sse::render(&self.lines)).clone()
    }
}

impl std::ops::Deref for Lines {
    type Target = [LogLine];
    fn deref(&self) -> &[LogLine] {
        &self.lines
    }
}

/// Batches kept for followers that read a little late; one further behind reads the store.
const BROADCAST_BATCHES: usize = 256;

struct Channel {
    /// The highest stored sequence number (wake-ups for simple waiters).
    seq: watch::Sender<i64>,
    lines: broadcast::Sender<Batch>,
    /// A capture is writing this build's log.
    live: bool,
}

impl Channel {
    fn new() -> Channel {
        Channel { seq: watch::channel(0).0, lines: broadcast::channel(BROADCAST_BATCHES).0, live: false }
    }
}

/// Live log traffic, per build being captured.
#[derive(Default)]
pub struct LogHub {
    builds: Mutex<HashMap<i64, Channel>>,
}

impl LogHub {
    /// Wakes on every stored batch; ends (the sender drops) when the build ends.
    pub fn subscribe(&self, build_id: i64) -> watch::Receiver<i64> {
        self.builds.lock().unwrap().entry(build_id).or_insert_with(Channel::new).seq.subscribe()
    }

    /// Every batch stored from now on, until the build ends (then `Closed`).
    pub fn subscribe_lines(&self, build_id: i64) -> broadcast::Receiver<Batch> {
        self.builds.lock().unwrap().entry(build_id).or_insert_with(Channel::new).lines.subscribe()
    }

    /// A capture starts writing the build's log.
    pub fn opened(&self, build_id: i64) {
        self.builds.lock().unwrap().entry(build_id).or_insert_with(Channel::new).live = true;
    }

    pub fn stored(&self, build_id: i64, batch: Batch) {
        let builds = self.builds.lock().unwrap();
        if let Some(ch) = builds.get(&build_id) {
            if let Some(last) = batch.last() {
                ch.seq.send_replace(last.seq);
            }
            // No receiver is fine: nobody follows.
            let _ = ch.lines.send(batch);
        }
    }

    /// The build ended: wake every follower one last time and forget the channel.
    pub fn ended(&self, build_id: i64) {
        if let Some(ch) = self.builds.lock().unwrap().remove(&build_id) {
            ch.seq.send_modify(|_| {});
        }
    }

    /// A follower is done: drop the channel it created for a build no capture writes.
    pub fn release(&self, build_id: i64) {
        let mut builds = self.builds.lock().unwrap();
        if builds.get(&build_id).is_some_and(|ch| !ch.live && ch.lines.receiver_count() == 0 && ch.seq.receiver_count() == 0) {
            builds.remove(&build_id);
        }
    }
}

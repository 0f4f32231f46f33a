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

/// Lines `first..=last` of a build were stored by another replica: when followers here wait for
/// them, read them from the store (once for all of them) and hand them out as if stored here.
pub async fn relay(store: &crate::store::Store, hub: &LogHub, build_id: i64, first: i64, last: i64) -> Result<(), crate::store::StoreError> {
    let Some(after) = hub.relay_after(build_id, first, last) else { return Ok(()) };
    let lines = store.log_after(build_id, after, last - after).await?;
    if !lines.is_empty() {
        hub.stored(build_id, Arc::new(Lines::new(lines)));
    }
    Ok(())
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
    /// The captures' store writers: a replica that stops waits for them before it hands its
    /// builds to another, so no line is stored by both.
    writers: tokio_util::task::TaskTracker,
    /// Cancelled when the replica stops: log streams end without their `end` event, and their
    /// clients resume on another replica with `Last-Event-ID`.
    cut: tokio_util::sync::CancellationToken,
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

    /// The capture of the build stopped without the build ending here (this replica handed it
    /// to another): from now on its lines reach this replica's followers as relays.
    pub fn closed(&self, build_id: i64) {
        if let Some(ch) = self.builds.lock().unwrap().get_mut(&build_id) {
            ch.live = false;
        }
    }

    /// Another replica stored lines `first..=last` of a build: when followers here wait for
    /// them (and no capture here writes the build), the sequence number to read the store
    /// after — the last one they were handed, or just before `first` when they were handed
    /// none yet (the followers read the store themselves for anything before).
    pub fn relay_after(&self, build_id: i64, first: i64, last: i64) -> Option<i64> {
        let builds = self.builds.lock().unwrap();
        let ch = builds.get(&build_id)?;
        if ch.live || ch.lines.receiver_count() == 0 {
            return None;
        }
        let known = *ch.seq.borrow();
        (known < last).then_some(if known == 0 { first - 1 } else { known })
    }

    /// The build ended on another replica: like [`LogHub::ended`], unless a capture here writes
    /// it (then this replica ends it itself, after its last line).
    pub fn ended_elsewhere(&self, build_id: i64) {
        let mut builds = self.builds.lock().unwrap();
        if builds.get(&build_id).is_some_and(|ch| !ch.live) {
            if let Some(ch) = builds.remove(&build_id) {
                ch.seq.send_modify(|_| {});
            }
        }
    }

    /// Ends every log stream of this replica (it stops).
    pub fn cut_followers(&self) {
        self.cut.cancel();
    }

    /// Resolves when the replica's log streams are cut.
    pub fn cut(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.cut.clone().cancelled_owned()
    }

    /// Spawns a capture's store writer where [`LogHub::writers_done`] waits for it.
    pub(crate) fn spawn_writer<F>(&self, writer: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.writers.spawn(writer)
    }

    /// Waits (at most `limit`) until every capture's writer has stored its last line; false when
    /// some were still writing at the limit.
    pub async fn writers_done(&self, limit: std::time::Duration) -> bool {
        self.writers.close();
        tokio::time::timeout(limit, self.writers.wait()).await.is_ok()
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

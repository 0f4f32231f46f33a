//! Following a build's log: the backlog from the store after a sequence number, then batches from
//! the hub's broadcast as they are stored, ending once the build is final and every line was
//! read. A follower that lags behind the broadcast (or a build written by another process) reads
//! the store instead; no line is skipped or repeated either way.

use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::broadcast::{self, error::RecvError};

use super::{Batch, Lines, LogHub};
use crate::store::{LogLine, Store, StoreError};

const PAGE: i64 = 1000;
/// Re-check the store this often even without news (a build no capture of this process writes).
const RECHECK: Duration = Duration::from_secs(2);

struct Follower {
    store: Store,
    hub: Arc<LogHub>,
    build_id: i64,
    rx: broadcast::Receiver<Batch>,
    /// The last sequence number handed out.
    after: i64,
    /// The broadcast has lines past `after` that the store must fill in first.
    behind: bool,
    /// The build is final: only the store's remaining pages are left.
    ending: bool,
    done: bool,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.hub.release(self.build_id);
    }
}

/// Every line after `after`, then live lines, ending once the build is final and drained.
pub fn follow(store: Store, hub: Arc<LogHub>, build_id: i64, after: i64) -> impl Stream<Item = Result<Batch, StoreError>> {
    // Subscribed before the backlog is read, so no batch falls between the two.
    let rx = hub.subscribe_lines(build_id);
    let f = Follower { store, hub, build_id, rx, after, behind: true, ending: false, done: false };
    futures_util::stream::unfold(f, |mut f| async move {
        if f.done {
            return None;
        }
        match f.next().await {
            Ok(Some(lines)) => Some((Ok(lines), f)),
            Ok(None) => None,
            Err(e) => {
                f.done = true;
                Some((Err(e), f))
            }
        }
    })
}

impl Follower {
    async fn next(&mut self) -> Result<Option<Batch>, StoreError> {
        if self.ending {
            return self.last_read().await;
        }
        loop {
            if self.behind {
                let lines = self.store.log_after(self.build_id, self.after, PAGE).await?;
                if let Some(last) = lines.last() {
                    self.after = last.seq;
                    return Ok(Some(Arc::new(Lines::new(lines))));
                }
                self.behind = false;
                // Caught up with the store: done if the build is final (its capture closed, and
                // every line was stored, before the build turned final).
                if self.store.build(self.build_id).await?.is_none_or(|b| b.state.is_final()) {
                    return self.last_read().await;
                }
            }
            match tokio::time::timeout(RECHECK, self.rx.recv()).await {
                Ok(Ok(batch)) => {
                    let (Some(first), Some(last)) = (batch.first(), batch.last()) else { continue };
                    if last.seq <= self.after {
                        continue;
                    }
                    if first.seq == self.after + 1 {
                        // The usual case: the whole batch, shared with every other follower.
                        self.after = last.seq;
                        return Ok(Some(batch));
                    }
                    let fresh: Vec<LogLine> = batch.iter().filter(|l| l.seq > self.after).cloned().collect();
                    if fresh[0].seq != self.after + 1 {
                        // A gap (lines stored before this follower subscribed): the store has them.
                        self.behind = true;
                        continue;
                    }
                    self.after = last.seq;
                    return Ok(Some(Arc::new(Lines::new(fresh))));
                }
                // Too slow for the broadcast, or nothing for a while: read the store.
                Ok(Err(RecvError::Lagged(_))) | Err(_) => self.behind = true,
                // The build ended: read what is left, then stop.
                Ok(Err(RecvError::Closed)) => return self.last_read().await,
            }
        }
    }

    /// The build ended: the rest from the store, a page at a time, then the end.
    async fn last_read(&mut self) -> Result<Option<Batch>, StoreError> {
        self.ending = true;
        let lines = self.store.log_after(self.build_id, self.after, PAGE).await?;
        match lines.last() {
            Some(last) => {
                self.after = last.seq;
                Ok(Some(Arc::new(Lines::new(lines))))
            }
            None => {
                self.done = true;
                Ok(None)
            }
        }
    }
}

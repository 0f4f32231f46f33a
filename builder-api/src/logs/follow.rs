//! Following a build's log: read what is stored after a sequence number, then wait for the hub's
//! wake-up (or a periodic re-check) until the build is final and every line has been read.

use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;

use super::LogHub;
use crate::store::{LogLine, Store, StoreError};

const PAGE: i64 = 1000;
/// Re-check the store this often even without a wake-up (a line written by another process).
const RECHECK: Duration = Duration::from_secs(2);

/// Every line after `after`, then live lines, ending once the build is final and drained.
pub fn follow(store: Store, hub: Arc<LogHub>, build_id: i64, after: i64) -> impl Stream<Item = Result<Vec<LogLine>, StoreError>> {
    let wake = hub.subscribe(build_id);
    futures_util::stream::unfold(Some((store, wake, after)), move |state| async move {
        let (store, mut wake, mut after) = state?;
        loop {
            let lines = match store.log_after(build_id, after, PAGE).await {
                Ok(lines) => lines,
                Err(e) => return Some((Err(e), None)),
            };
            if let Some(last) = lines.last() {
                after = last.seq;
                return Some((Ok(lines), Some((store, wake, after))));
            }
            // Nothing new: done when the build is final (its capture closed before that).
            match store.build(build_id).await {
                Ok(Some(b)) if !b.state.is_final() => {}
                Ok(_) => {
                    // One more read: lines stored between the read above and the state check.
                    return match store.log_after(build_id, after, PAGE).await {
                        Ok(lines) if !lines.is_empty() => {
                            after = lines.last().unwrap().seq;
                            Some((Ok(lines), Some((store, wake, after))))
                        }
                        Ok(_) => None,
                        Err(e) => Some((Err(e), None)),
                    };
                }
                Err(e) => return Some((Err(e), None)),
            }
            let _ = tokio::time::timeout(RECHECK, wake.changed()).await;
        }
    })
}

//! Where a log line goes: a step's stdout/stderr is read line by line ([`capture`]), masked,
//! numbered and stored in batches; followers ([`follow`]) read from the store and are woken by
//! the [`LogHub`], so a slow follower never holds up the build or another follower.

pub mod capture;
pub mod follow;

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

/// Wake-ups for followers: per running build, the highest stored sequence number.
#[derive(Default)]
pub struct LogHub {
    builds: Mutex<HashMap<i64, watch::Sender<i64>>>,
}

impl LogHub {
    pub fn subscribe(&self, build_id: i64) -> watch::Receiver<i64> {
        let mut builds = self.builds.lock().unwrap();
        builds.entry(build_id).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    pub fn stored(&self, build_id: i64, seq: i64) {
        let builds = self.builds.lock().unwrap();
        if let Some(tx) = builds.get(&build_id) {
            tx.send_replace(seq);
        }
    }

    /// The build ended: wake every follower one last time and forget the channel.
    pub fn ended(&self, build_id: i64) {
        if let Some(tx) = self.builds.lock().unwrap().remove(&build_id) {
            tx.send_modify(|_| {});
        }
    }
}

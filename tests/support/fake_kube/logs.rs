//! Container logs as the kubelet keeps them: one entry per line with the time it was read, kept
//! per (pod uid, container) so a pod that is deleted and recreated with the same name starts
//! empty, and readable as long as the pod object exists.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

pub struct ContainerLog {
    lines: Mutex<Vec<(DateTime<Utc>, String)>>,
    /// (number of lines, container terminated): follow streams wait on it.
    state: watch::Sender<(usize, bool)>,
}

impl ContainerLog {
    fn new() -> Self {
        ContainerLog { lines: Mutex::new(Vec::new()), state: watch::channel((0, false)).0 }
    }

    pub fn push(&self, line: String) {
        let mut lines = self.lines.lock().unwrap();
        lines.push((Utc::now(), line));
        let n = lines.len();
        drop(lines);
        self.state.send_modify(|s| s.0 = n);
    }

    pub fn terminate(&self) {
        self.state.send_modify(|s| s.1 = true);
    }

    pub fn subscribe(&self) -> watch::Receiver<(usize, bool)> {
        self.state.subscribe()
    }

    pub fn terminated(&self) -> bool {
        self.state.borrow().1
    }

    pub fn len(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Lines from index `from` on.
    pub fn since(&self, from: usize) -> Vec<(DateTime<Utc>, String)> {
        let lines = self.lines.lock().unwrap();
        lines.get(from..).map(|s| s.to_vec()).unwrap_or_default()
    }

    /// The index of the first line at or after `t`.
    pub fn index_at(&self, t: DateTime<Utc>) -> usize {
        let lines = self.lines.lock().unwrap();
        lines.iter().position(|(ts, _)| *ts >= t).unwrap_or(lines.len())
    }

    pub fn text(&self) -> String {
        self.lines.lock().unwrap().iter().map(|(_, l)| format!("{l}\n")).collect()
    }
}

/// The kubelet's timestamp format: RFC 3339 with exactly nine fractional digits.
pub fn format_ts(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.9fZ").to_string()
}

#[derive(Default)]
pub struct Logs {
    inner: Mutex<HashMap<(String, String), Arc<ContainerLog>>>,
}

impl Logs {
    /// Called when a container starts: from then on its log can be read.
    pub fn start(&self, pod_uid: &str, container: &str) -> Arc<ContainerLog> {
        let log = Arc::new(ContainerLog::new());
        self.inner.lock().unwrap().insert((pod_uid.to_string(), container.to_string()), log.clone());
        log
    }

    pub fn get(&self, pod_uid: &str, container: &str) -> Option<Arc<ContainerLog>> {
        self.inner.lock().unwrap().get(&(pod_uid.to_string(), container.to_string())).cloned()
    }

    pub fn forget_pod(&self, pod_uid: &str) {
        self.inner.lock().unwrap().retain(|(uid, _), _| uid != pod_uid);
    }
}

//! Capture: one task per build owns the sequence numbers. Steps send lines through a bounded
//! channel (a flood of output slows the step's pipe, not Kiln's memory); the task masks secrets,
//! stores lines in batches and wakes followers.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::LogHub;
use crate::store::{now_ms, LogLine, Store, Stream};

/// Longest line kept; the rest of a longer line is cut with a marker.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
const BATCH: usize = 512;
/// Lines streaming in are stored (and sent to followers) at most this often.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(25);

struct Entry {
    step: String,
    stream: Stream,
    line: String,
    meta: Option<serde_json::Value>,
}

/// A handle steps write lines into. Cheap to clone.
#[derive(Clone)]
pub struct LogSink {
    tx: mpsc::Sender<Entry>,
}

impl LogSink {
    pub async fn line(&self, step: &str, stream: Stream, line: impl Into<String>) {
        // The receiver lives until every sink is dropped, so this only fails after close.
        let _ = self.tx.send(Entry { step: step.to_string(), stream, line: line.into(), meta: None }).await;
    }

    pub async fn system(&self, step: &str, line: impl Into<String>) {
        self.line(step, Stream::System, line).await
    }

    /// A step begins: `── step NAME`, and a `step` event for live followers.
    pub async fn step_started(&self, step: &str) {
        let meta = serde_json::json!({"phase": "started"});
        let _ = self.tx.send(Entry { step: step.into(), stream: Stream::Step, line: format!("── step {step}"), meta: Some(meta) }).await;
    }

    /// A step ended: its state, how long it ran, its exit code, and why it failed.
    pub async fn step_finished(&self, step: &str, state: &str, secs: f64, exit_code: Option<i32>, reason: Option<&str>) {
        let line = match reason {
            None if state == "Succeeded" => format!("── step {step} succeeded in {secs:.1}s"),
            None => format!("── step {step} ended {state} after {secs:.1}s"),
            Some(r) => format!("── step {step} ended {state} after {secs:.1}s: {r}"),
        };
        let meta = serde_json::json!({
            "phase": "finished", "state": state, "duration_ms": (secs * 1000.0).round() as i64,
            "exit_code": exit_code, "reason": reason,
        });
        let _ = self.tx.send(Entry { step: step.into(), stream: Stream::Step, line, meta: Some(meta) }).await;
    }

    /// Reads `reader` to its end, one log line per text line. Returns its most telling line
    /// ([`crate::failure_line`]; unmasked: mask it before showing it anywhere), which names the
    /// cause when a step fails.
    pub async fn pipe(&self, step: &str, stream: Stream, reader: impl AsyncRead + Unpin) -> Option<String> {
        let mut reader = BufReader::with_capacity(64 * 1024, reader);
        let mut buf = Vec::with_capacity(1024);
        let mut telling = crate::failure_line::TellingLine::default();
        loop {
            buf.clear();
            match (&mut reader).take(MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut buf).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    self.system(step, format!("[kiln] reading {} failed: {e}", stream.as_str())).await;
                    break;
                }
            }
            let complete = buf.last() == Some(&b'\n');
            if buf.len() > MAX_LINE_BYTES && !complete {
                // An over-long line: keep its head, drop the rest up to the newline.
                let mut line = String::from_utf8_lossy(&buf[..MAX_LINE_BYTES]).into_owned();
                line.push_str(" …[line cut at 16 KiB]");
                self.line(step, stream, line).await;
                let mut rest = Vec::new();
                if reader.read_until(b'\n', &mut rest).await.unwrap_or(0) == 0 {
                    break;
                }
                continue;
            }
            let text = String::from_utf8_lossy(&buf);
            let text = text.trim_end_matches('\n').trim_end_matches('\r');
            telling.offer(text);
            self.line(step, stream, text).await;
        }
        telling.best().map(String::from)
    }
}

/// The capture of one build's log. `close` flushes every line sent before it.
pub struct LogCapture {
    sink: LogSink,
    task: JoinHandle<Result<(), crate::store::StoreError>>,
}

impl LogCapture {
    /// Starts capturing; numbering continues after what the store already holds for the build.
    /// Output past `max_bytes` (of stdout/stderr, counting what is stored) is dropped after one
    /// notice; Kiln's own lines and step events are always kept.
    pub async fn start(
        store: Store,
        hub: Arc<LogHub>,
        build_id: i64,
        masker: Arc<Masker>,
        max_bytes: u64,
    ) -> Result<LogCapture, crate::store::StoreError> {
        let seq = store.last_log_seq(build_id).await?;
        let bytes = store.log_bytes(build_id).await? as u64;
        Ok(Self::start_after(store, hub, build_id, masker, max_bytes, seq, bytes))
    }

    /// The capture of a build that has never run: it has no stored line yet (only a capture
    /// writes log lines, and a build is Queued only when inserted), so nothing is read first.
    pub fn start_fresh(store: Store, hub: Arc<LogHub>, build_id: i64, masker: Arc<Masker>, max_bytes: u64) -> LogCapture {
        Self::start_after(store, hub, build_id, masker, max_bytes, 0, 0)
    }

    /// Continues after line `seq`, with `bytes` of output already counted against the cap.
    fn start_after(store: Store, hub: Arc<LogHub>, build_id: i64, masker: Arc<Masker>, max_bytes: u64, mut seq: i64, mut bytes: u64) -> LogCapture {
        let mut truncated = bytes > max_bytes;
        hub.opened(build_id);
        let (tx, mut rx) = mpsc::channel::<Entry>(4096);
        let writer_hub = hub.clone();
        let task = writer_hub.spawn_writer(async move {
            let mut batch = Vec::with_capacity(BATCH);
            let mut last_flush: Option<tokio::time::Instant> = None;
            while let Some(first) = rx.recv().await {
                batch.clear();
                let mut next = Some(first);
                let due = last_flush.map_or_else(tokio::time::Instant::now, |t| t + FLUSH_EVERY);
                loop {
                    while let Some(entry) = next.take() {
                        let output = matches!(entry.stream, Stream::Stdout | Stream::Stderr);
                        let mut keep = Some(entry);
                        if output {
                            let len = keep.as_ref().map_or(0, |e| e.line.len() as u64 + 1);
                            if truncated {
                                keep = None;
                            } else if bytes + len > max_bytes {
                                truncated = true;
                                let step = keep.take().map(|e| e.step).unwrap_or_default();
                                keep = Some(Entry {
                                    step,
                                    stream: Stream::System,
                                    line: format!(
                                        "[kiln] log truncated: this build's output reached the cap of {}; further output is dropped, the build goes on",
                                        registry_sync::human_bytes(max_bytes)
                                    ),
                                    meta: None,
                                });
                            } else {
                                bytes += len;
                            }
                        }
                        if let Some(entry) = keep {
                            seq += 1;
                            batch.push(LogLine {
                                seq,
                                step: entry.step,
                                stream: entry.stream,
                                at: now_ms(),
                                line: masker.mask(entry.line),
                                meta: entry.meta,
                            });
                        }
                        if batch.len() < BATCH {
                            next = rx.try_recv().ok();
                        }
                    }
                    if batch.len() >= BATCH {
                        break;
                    }
                    // Lines arriving faster than one store per FLUSH_EVERY are gathered until it
                    // is due (a line after a quiet spell goes out at once): each stored batch wakes
                    // every follower, so a thousand followers of a chatty build cost a thousand
                    // wake-ups per batch, not per line.
                    match tokio::time::timeout_at(due, rx.recv()).await {
                        Ok(Some(entry)) => next = Some(entry),
                        Ok(None) | Err(_) => break,
                    }
                }
                if batch.is_empty() {
                    continue;
                }
                store.append_log(build_id, &batch).await?;
                last_flush = Some(tokio::time::Instant::now());
                hub.stored(build_id, Arc::new(super::Lines::new(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))));
            }
            // Every sink is gone: closed, or dropped with a build this replica stopped following.
            hub.closed(build_id);
            Ok(())
        });
        LogCapture { sink: LogSink { tx }, task }
    }

    pub fn sink(&self) -> LogSink {
        self.sink.clone()
    }

    /// Waits until every line sent so far is stored. Every other sink must be dropped first.
    pub async fn close(self) -> Result<(), crate::store::StoreError> {
        drop(self.sink);
        self.task.await.unwrap_or_else(|e| panic!("log capture task panicked: {e}"))
    }
}

/// Replaces every known secret with `***` before a line is stored.
pub struct Masker {
    secrets: Vec<String>,
}

impl Masker {
    pub fn new(mut secrets: Vec<String>) -> Masker {
        // Short values would mask ordinary words; longest first so overlaps mask fully.
        secrets.retain(|s| s.len() >= 4);
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Masker { secrets }
    }

    pub fn mask(&self, line: impl Into<String>) -> String {
        let line = line.into();
        let mut line = line;
        for s in &self.secrets {
            if line.contains(s.as_str()) {
                line = line.replace(s.as_str(), "***");
            }
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_secret_and_ignores_tiny_ones() {
        let m = Masker::new(vec!["s3cr3t-token".into(), "ab".into()]);
        assert_eq!(m.mask("using s3cr3t-token and s3cr3t-token, ab"), "using *** and ***, ab");
    }
}

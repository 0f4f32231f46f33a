//! Following one container's log into the build log. A `follow` stream ends when the container
//! exits, but also when the apiserver or the connection drops it; it is reopened with
//! `sinceTime` and the overlap dropped, so every line arrives once, in order. `sinceTime` has
//! second precision, so lines are compared by their nanosecond timestamps (`timestamps=true`),
//! and lines sharing the last timestamp are counted.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::AsyncBufReadExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::LogParams;
use kube::Api;

use crate::logs::capture::{LogSink, MAX_LINE_BYTES};
use crate::store::Stream;

/// Where a follower is in one container's log.
#[derive(Debug, Default, Clone)]
pub struct LogCursor {
    /// Lines to drop from the start of the log (already stored before a Kiln restart).
    pub skip: u64,
    /// Lines delivered so far (including skipped ones).
    pub delivered: u64,
    last: Option<DateTime<Utc>>,
    /// Of the delivered lines, how many carry exactly `last`.
    at_last: u64,
    /// The most telling line so far ([`crate::failure_line`]): it names the cause when the step
    /// fails.
    pub telling: crate::failure_line::TellingLine,
}

impl LogCursor {
    /// A cursor that drops the first `skip` lines (stored before a restart).
    pub fn skipping(skip: u64) -> LogCursor {
        LogCursor { skip, ..LogCursor::default() }
    }
}

/// How one pass over the stream ended.
pub enum PassEnd {
    /// The stream ended (container exited, or the stream was cut: the caller decides).
    Ended,
    /// The log cannot be read (yet): a 400 before the container starts, a 404 after the pod is
    /// gone.
    Unavailable(String),
}

/// Reads the container's log from the cursor on, once (`follow` or not), sending new lines to
/// `sink` under the step's name.
pub async fn pass(pods: &Api<Pod>, pod: &str, container: &str, follow: bool, cursor: &mut LogCursor, sink: &LogSink) -> PassEnd {
    let params = LogParams {
        container: Some(container.to_string()),
        follow,
        timestamps: true,
        // Whole seconds, floor (kube rounds to the nearest): the overlap is dropped below. kube
        // takes jiff's type, which k8s-openapi re-exports.
        since_time: cursor.last.and_then(|t| k8s_openapi::jiff::Timestamp::from_second(t.timestamp()).ok()),
        ..LogParams::default()
    };
    let reader = match pods.log_stream(pod, &params).await {
        Ok(reader) => reader,
        Err(e) => return PassEnd::Unavailable(e.to_string()),
    };
    // Lines sharing `last` that a reopened stream repeats.
    let mut repeat_budget = cursor.at_last;
    let mut reader = Box::pin(reader);
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) => return PassEnd::Ended,
            Ok(_) => {}
            // A cut connection: the caller reopens.
            Err(_) => return PassEnd::Ended,
        }
        if buf.last() != Some(&b'\n') && follow {
            // A line cut by a dropped stream: the reopened stream sends it whole.
            return PassEnd::Ended;
        }
        let line = String::from_utf8_lossy(&buf);
        let (ts, text) = split_timestamp(line.trim_end_matches('\n'));
        if let (Some(ts), Some(last)) = (ts, cursor.last) {
            if ts < last {
                continue;
            }
            if ts == last && repeat_budget > 0 {
                repeat_budget -= 1;
                continue;
            }
        }
        if let Some(ts) = ts {
            if Some(ts) == cursor.last {
                cursor.at_last += 1;
            } else {
                cursor.last = Some(ts);
                cursor.at_last = 1;
                repeat_budget = 0;
            }
        }
        cursor.delivered += 1;
        if cursor.delivered <= cursor.skip {
            continue;
        }
        let mut text = text.trim_end_matches('\r').to_string();
        if text.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str(" …[line cut at 16 KiB]");
        }
        cursor.telling.offer(&text);
        sink.line(container, Stream::Stdout, text).await;
    }
}

/// `2026-11-28T15:00:00.123456789Z text` → (timestamp, text). A line without one is kept whole.
pub fn split_timestamp(line: &str) -> (Option<DateTime<Utc>>, &str) {
    let (ts, rest) = line.split_once(' ').unwrap_or((line, ""));
    match DateTime::parse_from_rfc3339(ts) {
        Ok(t) => (Some(t.to_utc()), rest),
        Err(_) => (None, line),
    }
}

/// Pause between reopenings of a cut stream.
pub const REOPEN_DELAY: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_kubelet_timestamps() {
        let (ts, text) = split_timestamp("2026-11-28T15:00:00.123456789Z hello world");
        assert_eq!(ts.unwrap().timestamp_subsec_nanos(), 123456789);
        assert_eq!(text, "hello world");
        assert_eq!(split_timestamp("no timestamp here"), (None, "no timestamp here"));
        assert_eq!(split_timestamp("2026-11-28T15:00:00Z").1, "");
        // Another offset names the same instant; a date alone is text.
        assert_eq!(split_timestamp("2026-11-28T17:00:00.5+02:00 a").0, split_timestamp("2026-11-28T15:00:00.500000000Z b").0);
        assert_eq!(split_timestamp("2026-11-28 build"), (None, "2026-11-28 build"));
    }
}

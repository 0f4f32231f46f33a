//! A follow as Server-Sent Events: `event: line` (stdout, stderr and Kiln's own lines) and
//! `event: step` (a step started or finished), each with the line's sequence number as its `id`,
//! so a client that reconnects with `Last-Event-ID` gets every later line and none twice; then one
//! `event: end` with the build's result. Keep-alive comments keep proxies from cutting an idle
//! stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};
use serde_json::json;

use super::follow::follow;
use super::LogHub;
use crate::store::{LogLine, Store, Stream as LogStream};

/// How often an idle stream gets a keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub fn line_event(l: &LogLine) -> Event {
    let name = if l.stream == LogStream::Step { "step" } else { "line" };
    let mut data = json!({"seq": l.seq, "step": l.step, "stream": l.stream.as_str(), "at": l.at, "line": l.line});
    if let Some(meta) = &l.meta {
        data["meta"] = meta.clone();
    }
    Event::default().event(name).id(l.seq.to_string()).data(data.to_string())
}

/// Every line after `after`, live, then the result.
pub fn events(store: Store, hub: Arc<LogHub>, build_id: i64, after: i64) -> impl Stream<Item = Result<Event, Infallible>> {
    let lines = follow(store.clone(), hub, build_id, after).flat_map(|batch| {
        let events: Vec<Result<Event, Infallible>> = match batch {
            Ok(lines) => lines.iter().map(|l| Ok(line_event(l))).collect(),
            Err(e) => vec![Ok(Event::default().event("error").data(json!({"error": e.to_string()}).to_string()))],
        };
        futures_util::stream::iter(events)
    });
    let end = futures_util::stream::once(async move {
        let data = match store.build(build_id).await {
            Ok(Some(b)) => json!({"state": b.state.as_str(), "reason": b.reason, "image": b.image, "digest": b.image_digest}),
            Ok(None) => json!({"state": "Unknown", "reason": "the build was deleted"}),
            Err(e) => json!({"state": "Unknown", "reason": e.to_string()}),
        };
        Ok(Event::default().event("end").data(data.to_string()))
    });
    lines.chain(end)
}

pub fn sse(store: Store, hub: Arc<LogHub>, build_id: i64, after: i64) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    Sse::new(events(store, hub, build_id, after)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
}

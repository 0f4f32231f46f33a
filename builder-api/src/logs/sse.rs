//! A follow as Server-Sent Events: `event: line` (stdout, stderr and Kiln's own lines) and
//! `event: step` (a step started or finished), each with the line's sequence number as its `id`,
//! so a client that reconnects with `Last-Event-ID` gets every later line and none twice; then one
//! `event: end` with the build's result. Keep-alive comments keep proxies from cutting an idle
//! stream.

use std::convert::Infallible;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::json;

use super::follow::follow;
use super::LogHub;
use crate::store::{LogLine, Store, Stream as LogStream};

/// How often an idle stream gets a keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One record per line: `event: line|step`, `id: <seq>`, `data: <json>`. The text is rendered
/// once per stored batch and shared by every follower (see [`super::Lines::sse`]).
pub fn render(lines: &[LogLine]) -> Bytes {
    let mut out = String::with_capacity(lines.iter().map(|l| l.line.len() + 96).sum());
    for l in lines {
        let name = if l.stream == LogStream::Step { "step" } else { "line" };
        let mut data = json!({"seq": l.seq, "step": l.step, "stream": l.stream.as_str(), "at": l.at, "line": l.line});
        if let Some(meta) = &l.meta {
            data["meta"] = meta.clone();
        }
        // JSON text has no raw newline, so `data` is one field line.
        let _ = write!(out, "event: {name}\nid: {}\ndata: {data}\n\n", l.seq);
    }
    Bytes::from(out)
}

fn record(event: &str, data: serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// Every line after `after`, live, then the result, as SSE text.
pub fn events(store: Store, hub: Arc<LogHub>, build_id: i64, after: i64) -> impl Stream<Item = Bytes> {
    let lines = follow(store.clone(), hub, build_id, after).map(|batch| match batch {
        Ok(lines) => lines.sse(),
        Err(e) => record("error", json!({"error": e.to_string()})),
    });
    let end = futures_util::stream::once(async move {
        let data = match store.build(build_id).await {
            Ok(Some(b)) => json!({"state": b.state.as_str(), "reason": b.reason, "image": b.image, "digest": b.image_digest}),
            Ok(None) => json!({"state": "Unknown", "reason": "the build was deleted"}),
            Err(e) => json!({"state": "Unknown", "reason": e.to_string()}),
        };
        record("end", data)
    });
    lines.chain(end)
}

/// Inserts a comment whenever `inner` has been quiet for `every`, so proxies keep the stream.
fn with_keep_alive(inner: impl Stream<Item = Bytes> + Send + 'static, every: Duration) -> impl Stream<Item = Bytes> {
    futures_util::stream::unfold(Box::pin(inner), move |mut inner| async move {
        match tokio::time::timeout(every, inner.next()).await {
            Ok(Some(bytes)) => Some((bytes, inner)),
            Ok(None) => None,
            Err(_) => Some((Bytes::from_static(b":keep-alive\n\n"), inner)),
        }
    })
}

/// The streaming answer: `text/event-stream`, never cached or buffered by proxies.
pub fn sse(store: Store, hub: Arc<LogHub>, build_id: i64, after: i64) -> Response {
    let body = Body::from_stream(with_keep_alive(events(store, hub, build_id, after), KEEP_ALIVE).map(Ok::<_, Infallible>));
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response()
}

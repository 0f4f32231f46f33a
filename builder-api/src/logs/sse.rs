//! A follow as Server-Sent Events: `event: line` (stdout, stderr and Kiln's own lines) and
//! `event: step` (a step started or finished), each with the line's sequence number as its `id`,
//! so a client that reconnects with `Last-Event-ID` gets every later line and none twice; then one
//! `event: end` with the build's result. Keep-alive comments keep proxies from cutting an idle
//! stream.

use std::convert::Infallible;
use std::fmt::Write;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde_json::json;

use super::follow::follow;
use crate::metrics::FollowerGuard;
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
    let cut = hub.cut();
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
    // Cut when the replica stops: no `end`, so the client resumes elsewhere.
    lines.chain(end).take_until(cut)
}

/// The follower's stream as written to the socket: what `inner` has ready is sent as one chunk
/// (under load a follower wakes to several stored batches, and one write serves them all), and a
/// comment goes out whenever `inner` has been quiet for `every`, so proxies keep the stream. The
/// keep-alive timer is re-armed only when it fires, not on every batch: with a thousand
/// followers, arming a timer per batch per follower is a good share of the server's work.
struct KeepAlive<S> {
    inner: Pin<Box<S>>,
    every: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// When `inner` last yielded.
    last: tokio::time::Instant,
    done: bool,
}

/// Most bytes sent as one chunk.
const CHUNK: usize = 256 * 1024;

fn with_keep_alive<S: Stream<Item = Bytes>>(inner: S, every: Duration) -> KeepAlive<S> {
    let now = tokio::time::Instant::now();
    KeepAlive { inner: Box::pin(inner), every, timer: Box::pin(tokio::time::sleep_until(now + every)), last: now, done: false }
}

impl<S: Stream<Item = Bytes>> Stream for KeepAlive<S> {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.done {
            return Poll::Ready(None);
        }
        let mut out: Option<Bytes> = None;
        let mut joined: Option<BytesMut> = None;
        loop {
            match self.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(bytes)) => {
                    match (&mut joined, out.take()) {
                        (Some(j), _) => j.extend_from_slice(&bytes),
                        (None, Some(first)) => {
                            let mut j = BytesMut::with_capacity(first.len() + bytes.len());
                            j.extend_from_slice(&first);
                            j.extend_from_slice(&bytes);
                            joined = Some(j);
                        }
                        (None, None) => out = Some(bytes),
                    }
                    let len = joined.as_ref().map_or_else(|| out.as_ref().map_or(0, Bytes::len), BytesMut::len);
                    if len >= CHUNK {
                        break;
                    }
                }
                Poll::Ready(None) => {
                    self.done = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        if let Some(bytes) = joined.map(BytesMut::freeze).or(out) {
            self.last = tokio::time::Instant::now();
            return Poll::Ready(Some(bytes));
        }
        if self.done {
            return Poll::Ready(None);
        }
        // Quiet: the timer decides. Fired early (there was output since it was armed): re-arm it
        // for `every` after the last output.
        while self.timer.as_mut().poll(cx).is_ready() {
            let due = self.last + self.every;
            if tokio::time::Instant::now() >= due {
                let next = tokio::time::Instant::now() + self.every;
                self.timer.as_mut().reset(next);
                self.last = tokio::time::Instant::now();
                return Poll::Ready(Some(Bytes::from_static(b":keep-alive\n\n")));
            }
            self.timer.as_mut().reset(due);
        }
        Poll::Pending
    }
}

/// The streaming answer: `text/event-stream`, never cached or buffered by proxies. `follower`
/// counts this stream in `kiln_log_followers` for as long as the body lives: it is dropped with
/// the body, when the build's log ends or the client goes away.
pub fn sse(store: Store, hub: Arc<LogHub>, build_id: i64, after: i64, follower: FollowerGuard) -> Response {
    let stream = with_keep_alive(events(store, hub, build_id, after), KEEP_ALIVE).map(move |chunk| {
        let _held = &follower;
        Ok::<_, Infallible>(chunk)
    });
    let body = Body::from_stream(stream);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn channel() -> (tokio::sync::mpsc::UnboundedSender<Bytes>, impl Stream<Item = Bytes>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        (tx, futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) }))
    }

    #[tokio::test]
    async fn ready_batches_go_out_as_one_chunk_and_a_quiet_stream_gets_keep_alives() {
        let every = Duration::from_millis(100);
        let (tx, inner) = channel();
        let mut stream = with_keep_alive(inner, every);
        for part in ["a\n\n", "b\n\n", "c\n\n"] {
            tx.send(Bytes::from_static(part.as_bytes())).unwrap();
        }
        assert_eq!(stream.next().await.unwrap(), Bytes::from_static(b"a\n\nb\n\nc\n\n"));
        // Quiet: a comment after `every`, not before.
        let quiet = tokio::time::Instant::now();
        assert_eq!(stream.next().await.unwrap(), Bytes::from_static(b":keep-alive\n\n"));
        assert!(quiet.elapsed() >= every - Duration::from_millis(5), "keep-alive after {:?}", quiet.elapsed());
        // Output resets the quiet time: a line sent at half the period, then a comment one whole
        // period after that line.
        tokio::time::sleep(every / 2).await;
        tx.send(Bytes::from_static(b"d\n\n")).unwrap();
        assert_eq!(stream.next().await.unwrap(), Bytes::from_static(b"d\n\n"));
        let after_line = tokio::time::Instant::now();
        assert_eq!(stream.next().await.unwrap(), Bytes::from_static(b":keep-alive\n\n"));
        assert!(after_line.elapsed() >= every - Duration::from_millis(5), "keep-alive {:?} after a line", after_line.elapsed());
        drop(tx);
        assert_eq!(stream.next().await, None);
    }
}

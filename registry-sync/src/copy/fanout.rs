//! One blob read from the source once and streamed to every target that lacks it, at the same
//! time: a bounded channel per target feeds a monolithic `PUT` with a streamed body, so memory
//! holds a few chunks per target and nothing touches the disk.
//!
//! The sha256 is computed while streaming; the last chunk is held back until the digest and size
//! are proven, and a mismatch ends every upload with an error instead, so no registry can ever
//! complete a blob whose bytes are not the ones asked for.

use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use futures_util::{future, StreamExt};
use reqwest::{header, StatusCode, Url};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use crate::client::RegistryError;
use crate::session::{pull_scope, RegistrySession};

use super::plan::Blob;
use super::target::{TargetCopy, TargetError};
use super::CopyEvent;

/// Why one pass over the source stream ended early.
enum PumpError {
    /// The source broke off; another pass may succeed.
    Source(RegistryError),
    /// The source's bytes (`size` of them, hashing to `actual`) are not the blob asked for; no
    /// pass will fix that.
    Mismatch { actual: String, size: u64 },
}

/// The failure of every target of `blob` when the source's bytes are `actual` and `size` long.
fn mismatch(blob: &Blob, actual: &str, size: u64) -> TargetError {
    TargetError::BlobMismatch {
        digest: blob.digest.clone(),
        actual: actual.to_string(),
        size,
        expected_size: blob.size,
    }
}

/// Copies `blob` from `source_repo` to every target in `targets`, retrying the targets whose
/// upload failed transiently (with a new read of the source for them). A target that cannot get
/// the blob is marked failed; the others carry on.
pub(crate) async fn copy_blob(
    source: &RegistrySession,
    source_repo: &str,
    blob: &Blob,
    mut targets: Vec<&TargetCopy>,
    chunk_buffer: usize,
    stall_timeout: std::time::Duration,
    progress: &(dyn Fn(CopyEvent) + Send + Sync),
) {
    let policy = source.retry();
    let mut attempt = 0;
    while !targets.is_empty() {
        attempt += 1;
        let last = attempt >= policy.attempts;
        // One upload session per target; a target that cannot open one is done for.
        let opened = future::join_all(targets.iter().map(|t| open_upload(t, blob))).await;
        let mut uploads: Vec<(&TargetCopy, Url)> = Vec::new();
        for (t, url) in targets.iter().zip(opened) {
            match url {
                Ok(url) => uploads.push((*t, url)),
                Err(source) => t.fail(TargetError::PushBlob { digest: blob.digest.clone(), source }),
            }
        }
        if uploads.is_empty() {
            return;
        }

        let operation = format!("get blob {}", blob.digest);
        let url = source.url(&format!("{source_repo}/blobs/{}", blob.digest));
        let scopes = [pull_scope(source_repo)];
        let response = match source
            .send(&scopes, &operation, || source.http().get(url.clone()))
            .await
            .and_then(|r| {
                (r.status() == StatusCode::OK)
                    .then_some(r)
                    .ok_or_else(|| source.protocol(&operation, "blob not readable".into()))
            }) {
            Ok(r) => r,
            Err(e) => {
                // The session already retried: the source cannot give this blob.
                for (t, _) in &uploads {
                    t.fail(TargetError::ReadBlob { digest: blob.digest.clone(), source: e.clone() });
                }
                return;
            }
        };

        let mut senders = Vec::new();
        let mut puts = Vec::new();
        for (t, url) in &uploads {
            let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(chunk_buffer.max(1));
            senders.push(Some((t.index, tx)));
            puts.push(put_blob(t, url.clone(), blob, rx));
        }
        let pump = pump(response, blob, source, &operation, senders, stall_timeout, progress);
        let (pumped, put_results) = future::join(pump, future::join_all(puts)).await;

        let mut retry = Vec::new();
        let mut pause = std::time::Duration::ZERO;
        for ((t, _), put) in uploads.iter().zip(put_results) {
            match (&pumped, put) {
                (Err(PumpError::Mismatch { actual, size }), _) => t.fail(mismatch(blob, actual, *size)),
                (_, Ok(())) => {
                    t.blobs_sent.fetch_add(1, Ordering::Relaxed);
                    t.locations.record(t.session.registry(), &blob.digest, t.repository());
                    progress(CopyEvent::BlobSent {
                        target: t.index,
                        digest: blob.digest.clone(),
                        size: blob.size,
                    });
                }
                (Err(PumpError::Source(e)), Err(_)) if last => t.fail(TargetError::ReadBlob {
                    digest: blob.digest.clone(),
                    source: e.clone(),
                }),
                (_, Err(e)) => match policy.pause(attempt, &e).filter(|_| e.is_transient()) {
                    Some(p) => {
                        pause = pause.max(p);
                        retry.push(*t);
                    }
                    None => t.fail(TargetError::PushBlob { digest: blob.digest.clone(), source: e }),
                },
            }
        }
        if !retry.is_empty() {
            tokio::time::sleep(pause).await;
        }
        targets = retry;
    }
}

/// The upload URL: the session a refused mount left open (a 202), else a new one.
async fn open_upload(t: &TargetCopy, blob: &Blob) -> Result<Url, RegistryError> {
    if let Some(url) = t.take_upload(&blob.digest) {
        return Ok(url);
    }
    let session = &t.session;
    let url = session.url(&format!("{}/blobs/uploads/", t.repository()));
    let operation = format!("start upload of blob {}", blob.digest);
    let res = session
        .send(&t.scopes, &operation, || {
            session.http().post(url.clone()).header(header::CONTENT_LENGTH, 0)
        })
        .await?;
    let res = session
        .expect_status(res, &[StatusCode::ACCEPTED], &operation)
        .await?;
    let location = crate::session::header_str(&res, "location")
        .ok_or_else(|| session.protocol(&operation, "202 without a Location".into()))?;
    session.resolve_location(&location)
}

/// PUTs the bytes arriving on `rx` as the whole blob; Ok once the registry answered 201.
async fn put_blob(
    t: &TargetCopy,
    mut url: Url,
    blob: &Blob,
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> Result<(), RegistryError> {
    url.query_pairs_mut().append_pair("digest", &blob.digest);
    // Counted as the connection takes the bytes (the body must be 'static: an Arc, not `t`).
    let sent = t.stats();
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .inspect(move |item| {
        if let Ok(chunk) = item {
            sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    });
    let operation = format!("push blob {}", blob.digest);
    let request = t
        .session
        .http()
        .put(url)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, blob.size)
        .body(reqwest::Body::wrap_stream(body));
    let res = t.session.send_once(&t.scopes, &operation, request).await?;
    let res = t
        .session
        .expect_status(res, &[StatusCode::CREATED], &operation)
        .await?;
    match crate::session::header_str(&res, "docker-content-digest") {
        Some(d) if d != blob.digest => Err(t.session.protocol(
            &operation,
            format!("the registry stored it as {d}"),
        )),
        _ => Ok(()),
    }
}

/// The size of the pieces the source's bytes are gathered into before they go to the targets: a
/// socket read gives 8–64 KiB, and each piece costs a channel send per target and a progress
/// event, so gathering makes those a few per MiB. Memory stays bounded: `chunk_buffer` pieces
/// per target per blob.
const SEND_PIECE: usize = 256 << 10;

/// A target's index and the channel feeding its upload.
type Sender = (usize, mpsc::Sender<Result<Bytes, std::io::Error>>);

/// Reads the source response once, hashing it, and hands each chunk to every live sender. The
/// last chunk goes out only after the digest and size are proven. Dropping the senders at the end
/// ends the uploads' bodies.
async fn pump(
    response: reqwest::Response,
    blob: &Blob,
    source: &RegistrySession,
    operation: &str,
    mut senders: Vec<Option<Sender>>,
    stall_timeout: std::time::Duration,
    progress: &(dyn Fn(CopyEvent) + Send + Sync),
) -> Result<(), PumpError> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    // Bytes gathered towards the next piece, and the last full piece (held back until the next
    // one is full, so that the end of the blob goes out only after its digest is proven).
    let mut pending = BytesMut::new();
    let mut held: Option<Bytes> = None;
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let err = source.transport_error(&e, operation);
                broadcast_error(&mut senders, &err.to_string()).await;
                return Err(PumpError::Source(err));
            }
        };
        hasher.update(&chunk);
        size += chunk.len() as u64;
        // A chunk that is a whole piece by itself goes on as it is, not copied.
        let piece = if pending.is_empty() && chunk.len() >= SEND_PIECE {
            chunk
        } else {
            pending.extend_from_slice(&chunk);
            if pending.len() < SEND_PIECE {
                continue;
            }
            pending.split().freeze()
        };
        if let Some(prev) = held.replace(piece) {
            broadcast(&mut senders, prev, stall_timeout, progress).await;
        }
        if senders.iter().all(Option::is_none) {
            // Every upload ended early; reading on would only waste the source.
            return Ok(());
        }
    }
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if actual != blob.digest || size != blob.size {
        broadcast_error(&mut senders, &mismatch(blob, &actual, size).to_string()).await;
        return Err(PumpError::Mismatch { actual, size });
    }
    for piece in held.into_iter().chain((!pending.is_empty()).then(|| pending.freeze())) {
        broadcast(&mut senders, piece, stall_timeout, progress).await;
    }
    Ok(())
}

/// Sends `chunk` to every live sender at once (the slowest bounds the pace); a closed receiver
/// is a target whose upload ended, which is fed no more. A target that takes nothing for
/// `stall_timeout` is cut off (its body ends short, so its upload fails and is retried) so that a
/// hung registry cannot hold the others back.
async fn broadcast(
    senders: &mut [Option<Sender>],
    chunk: Bytes,
    stall_timeout: std::time::Duration,
    progress: &(dyn Fn(CopyEvent) + Send + Sync),
) {
    let sends = senders.iter_mut().map(|slot| {
        let chunk = chunk.clone();
        async move {
            if let Some((target, tx)) = slot {
                let bytes = chunk.len() as u64;
                let sent = tokio::time::timeout(stall_timeout, tx.send(Ok(chunk))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    *slot = None;
                } else {
                    progress(CopyEvent::Bytes { target: *target, bytes });
                }
            }
        }
    });
    future::join_all(sends).await;
}

/// Ends every upload body with an error, so no registry completes the blob.
async fn broadcast_error(senders: &mut [Option<Sender>], why: &str) {
    for (_, tx) in senders.iter_mut().flatten() {
        let _ = tx.send(Err(std::io::Error::other(why.to_string()))).await;
    }
}

//! [`copy_image`]: reads the plan from the source, then runs the three steps over every target at
//! once — what each lacks ([`prepare`](super::prepare)), the missing blobs streamed
//! ([`fanout`](super::fanout)) or mounted after another copy's send, and the manifests, tags and
//! verification ([`manifests`](super::manifests)) — and gathers the report. The steps run for all
//! targets together so that each blob is read from the source once; steps 1 and 2 overlap blob by
//! blob, so a blob streams as soon as every target has answered for it.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future;

use crate::reference::ImageRef;
use crate::session::{pull_scope, RegistrySession};

use super::manifests::finish_target;
use super::plan::{self, Plan};
use super::prepare::{ensure_blob_without_sending, prepare_target, BlobCheck, TargetNeeds};
use super::target::{CopyReport, TargetCopy, TargetError};
use super::{fanout, CopyError, CopyEvent, CopyOptions};

/// Copies `source` (`host/repo@sha256:…` or `host/repo:tag`) to each of `targets` (`host/repo`),
/// tagging it there with each of `tags`. Returns a report per target; an error only when the
/// source cannot be read or the request is malformed.
pub async fn copy_image(
    source: &ImageRef,
    targets: &[ImageRef],
    tags: &[String],
    options: &CopyOptions,
    progress: &(dyn Fn(CopyEvent) + Send + Sync),
) -> Result<CopyReport, CopyError> {
    if targets.is_empty() {
        return Err(CopyError::NoTargets);
    }
    if let Some(t) = targets.iter().find(|t| t.digest().is_some() || t.tag().is_some()) {
        return Err(CopyError::InvalidTarget(t.to_string()));
    }
    let http = RegistrySession::http_client();
    // One session per registry, so tokens and connections are shared by its repositories.
    let mut sessions: HashMap<String, Arc<RegistrySession>> = HashMap::new();
    let mut session_for = |registry: &str| {
        sessions
            .entry(registry.to_string())
            .or_insert_with(|| {
                Arc::new(RegistrySession::new(
                    http.clone(),
                    registry,
                    &options.registry,
                    options.retry,
                ))
            })
            .clone()
    };
    let src = session_for(source.registry());
    src.authenticate(&[pull_scope(source.repository())])
        .await
        .map_err(CopyError::Source)?;
    let plan = plan::read_plan(
        &src,
        source.repository(),
        source.reference_part(),
        options.referrers,
    )
    .await?;
    let root = plan.root().clone();
    progress(CopyEvent::SourceRead {
        digest: root.digest.clone(),
        manifests: plan.manifests.len(),
        blobs: plan.blobs.len(),
        bytes: plan.blob_bytes(),
    });

    let target_copies: Vec<TargetCopy> = targets
        .iter()
        .enumerate()
        .map(|(index, t)| {
            TargetCopy::new(index, t.clone(), session_for(t.registry()), options.blob_locations.clone())
        })
        .collect();

    // 1. Which blobs each target may lack: the blobs of the manifests it lacks (all targets at
    //    once).
    let needs = future::join_all(
        target_copies
            .iter()
            .map(|t| prepare_target(t, &plan, progress)),
    )
    .await;

    // 2. Blob by blob: every target that may lack it looks (a mount, a HEAD, a claim), then the
    //    blob streams once to every target that lacks it, in the transfer slots shared with other
    //    copies, while other blobs are still being looked at — so a new layer uploads while the
    //    base's mount is under way, as skopeo does. A blob another copy is sending to a target's
    //    registry is waited for and mounted. (A wait never holds a slot, and a stream never waits
    //    for another copy, so copies waiting on each other's blobs cannot deadlock.)
    let sender = BlobSender {
        src: &src,
        source,
        plan: &plan,
        options,
        progress,
    };
    future::join_all((0..plan.blobs.len()).map(|blob| sender.look_and_send(blob, &target_copies, &needs))).await;

    // 3. Manifests, referrers, tags; then verify.
    future::join_all(
        target_copies
            .iter()
            .zip(&needs)
            .map(|(t, need)| finish_target(t, &plan, need, tags, progress)),
    )
    .await;

    Ok(CopyReport {
        source: source.clone(),
        digest: root.digest.clone(),
        media_type: root.media_type.clone(),
        manifests: plan.manifests.len(),
        blobs: plan.blobs.len(),
        blob_bytes: plan.blob_bytes(),
        targets: target_copies.iter().map(|t| t.report(&root.digest)).collect(),
    })
}

/// Streams blobs of one copy's plan, in the shared transfer slots.
struct BlobSender<'a> {
    src: &'a RegistrySession,
    source: &'a ImageRef,
    plan: &'a Plan,
    options: &'a CopyOptions,
    progress: &'a (dyn Fn(CopyEvent) + Send + Sync),
}

impl BlobSender<'_> {
    /// Looks at blob `blob` on every target that may lack it, then sends it to those that do and
    /// mounts it on those another copy is sending it to.
    async fn look_and_send(&self, blob: usize, targets: &[TargetCopy], needs: &[TargetNeeds]) {
        let b = &self.plan.blobs[blob];
        let looks: Vec<_> = targets
            .iter()
            .zip(needs)
            .filter(|(t, need)| !t.failed() && need.to_look_at.contains(&blob))
            .map(|(t, need)| async move {
                (t, need.look_at(t, &b.digest, b.size, self.source, self.progress).await)
            })
            .collect();
        let mut send_to = Vec::new();
        let mut awaited = Vec::new();
        for (t, check) in future::join_all(looks).await {
            match check {
                Ok(BlobCheck::There) => {}
                Ok(BlobCheck::Send(claim)) => {
                    t.hold_claim(&b.digest, claim);
                    send_to.push(t);
                }
                Ok(BlobCheck::Awaited(done)) => awaited.push((t, done)),
                Err(e) => t.fail(TargetError::Registry(e)),
            }
        }
        // A target that failed meanwhile (another blob's look) is not sent to.
        send_to.retain(|t| !t.failed());
        let own = async {
            if !send_to.is_empty() {
                self.send(blob, send_to).await;
            }
        };
        let others = future::join_all(
            awaited
                .into_iter()
                .map(|(t, done)| self.mount_after_other_send(t, blob, done)),
        );
        future::join(own, others).await;
    }

    /// Streams blob `blob` once to every target in `targets`, then ends their claims on it.
    async fn send(&self, blob: usize, targets: Vec<&TargetCopy>) {
        let _slot = self.options.transfers.acquire().await;
        let blob = &self.plan.blobs[blob];
        fanout::copy_blob(
            self.src,
            self.source.repository(),
            blob,
            targets.clone(),
            self.options.chunk_buffer,
            self.options.stall_timeout,
            self.progress,
        )
        .await;
        for t in targets {
            t.end_claim(&blob.digest);
        }
    }

    /// Waits until another copy's send of `blob` to `t`'s registry ends, then mounts it from
    /// where that put it — or, when that send failed, sends it (or waits for whoever does now).
    async fn mount_after_other_send(
        &self,
        t: &TargetCopy,
        blob: usize,
        mut done: tokio::sync::watch::Receiver<()>,
    ) {
        let digest = &self.plan.blobs[blob].digest;
        loop {
            // The sender side closes when that send ends, whatever its outcome.
            let _ = done.changed().await;
            if t.failed() {
                return;
            }
            match ensure_blob_without_sending(t, digest, self.source, self.progress).await {
                Ok(BlobCheck::There) => return,
                Ok(BlobCheck::Awaited(next)) => done = next,
                Ok(BlobCheck::Send(claim)) => {
                    t.hold_claim(digest, claim);
                    return self.send(blob, vec![t]).await;
                }
                Err(e) => return t.fail(TargetError::Registry(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kiln spawns copies as tasks; this stops compiling if the copy's future stops being `Send`.
    #[test]
    fn a_copy_can_be_spawned() {
        fn spawnable<T: Send + 'static>(_: &T) {}
        let copy = async {
            let source = ImageRef::parse("registry.example/team/app:v1").unwrap();
            let targets = [ImageRef::parse("mirror.example/team/app").unwrap()];
            copy_image(&source, &targets, &[], &CopyOptions::default(), &|_| {}).await
        };
        spawnable(&copy);
    }
}

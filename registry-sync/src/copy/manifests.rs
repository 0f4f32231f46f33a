//! Step 3 of a copy, per target, once its blobs are there: the manifests it lacks (children
//! before an index, referrers after their subject), the referrers' fallback tags for registries
//! without the referrers API, the tags, and the verification by digest. A registry accepts a
//! manifest only once what it references is there, hence this order and this step last.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use reqwest::{header, StatusCode};
use serde_json::{json, Value};

use crate::layer::sha256_digest;
use crate::session::{header_str, MANIFEST_ACCEPT};

use super::plan::{self, fetch_manifest, referrers_tag, Manifest, Plan};
use super::prepare::TargetNeeds;
use super::target::{TargetCopy, TargetError};
use super::CopyEvent;

/// Pushes the missing manifests (children first), the referrers' fallback tags, then the tags,
/// and verifies the result by digest.
pub(super) async fn finish_target(
    t: &TargetCopy,
    plan: &Plan,
    needs: &TargetNeeds,
    tags: &[String],
    progress: &(dyn Fn(CopyEvent) + Send + Sync),
) {
    let result = push_and_verify(t, plan, needs, tags, progress).await;
    if let Err(error) = result {
        t.fail(error);
    }
    progress(CopyEvent::TargetFinished {
        target: t.index,
        verified: !t.failed(),
    });
}

async fn push_and_verify(
    t: &TargetCopy,
    plan: &Plan,
    needs: &TargetNeeds,
    tags: &[String],
    progress: &(dyn Fn(CopyEvent) + Send + Sync),
) -> Result<(), TargetError> {
    if t.failed() {
        return Ok(());
    }
    let root = plan.root();
    let root_missing = !needs.present_manifests.contains(&plan.root);
    // A missing root that nothing else is pushed after (no referrers) goes up once, under its
    // first tag, at the tags' turn: a PUT by digest and then by tag would store it twice, and
    // each manifest PUT costs the registry CPU and fsyncs.
    let root_by_tag =
        root_missing && !tags.is_empty() && plan.root + 1 == plan.manifests.len() && plan.referrers.is_empty();
    for (i, m) in plan.manifests.iter().enumerate() {
        if needs.present_manifests.contains(&i) || (i == plan.root && root_by_tag) {
            continue;
        }
        push_manifest(t, m, &m.digest).await?;
        progress(CopyEvent::ManifestPushed {
            target: t.index,
            digest: m.digest.clone(),
        });
    }
    for referrers in &plan.referrers {
        ensure_referrers_tag(t, referrers).await?;
    }
    for (n, tag) in tags.iter().enumerate() {
        // A manifest that was missing until now cannot be what the tag names already.
        if !root_missing {
            let path = format!("{}/manifests/{tag}", t.repository());
            let current = t
                .session
                .head(&t.scopes, &path, Some(MANIFEST_ACCEPT), "check tag")
                .await?;
            if current.as_deref() == Some(root.digest.as_str()) {
                continue;
            }
        }
        push_manifest(t, root, tag).await?;
        if root_by_tag && n == 0 {
            progress(CopyEvent::ManifestPushed {
                target: t.index,
                digest: root.digest.clone(),
            });
        }
    }
    // Verify: only what the registry answers counts. A tag's HEAD answers with the digest of the
    // manifest it names, which proves both; without tags, the digest itself is asked for.
    let references: Vec<&String> = if tags.is_empty() {
        vec![&root.digest]
    } else {
        tags.iter().collect()
    };
    for reference in references {
        let path = format!("{}/manifests/{reference}", t.repository());
        let got = t
            .session
            .head(&t.scopes, &path, Some(MANIFEST_ACCEPT), "verify manifest")
            .await
            .map_err(TargetError::Verify)?;
        if got.as_deref() != Some(root.digest.as_str()) {
            return Err(TargetError::VerifyMismatch {
                repository: t.repository().to_string(),
                reference: reference.clone(),
                found: got.filter(|d| !d.is_empty()).unwrap_or_else(|| "missing".into()),
                expected: root.digest.clone(),
            });
        }
    }
    Ok(())
}

/// PUTs the manifest's raw bytes with its media type under `reference` (its digest or a tag).
async fn push_manifest(t: &TargetCopy, m: &Manifest, reference: &str) -> Result<(), TargetError> {
    let url = t
        .session
        .url(&format!("{}/manifests/{reference}", t.repository()));
    let operation = format!("push manifest {}:{reference}", t.repository());
    let res = t
        .session
        .send(&t.scopes, &operation, || {
            t.session
                .http()
                .put(url.clone())
                .header(header::CONTENT_TYPE, &m.media_type)
                .body(m.bytes.clone())
        })
        .await?;
    let res = t
        .session
        .expect_status(res, &[StatusCode::CREATED], &operation)
        .await?;
    if let Some(d) = header_str(&res, "docker-content-digest") {
        if d != m.digest {
            return Err(TargetError::StoredOtherDigest {
                operation,
                stored: d,
                expected: m.digest.clone(),
            });
        }
    }
    t.manifests_pushed.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// On a target without the referrers API, makes the `sha256-<hex>` tag list the referrers:
/// the source's own index when the target has none, else the target's merged with the missing
/// descriptors (a new index Kiln writes, since the target's own entries must be kept).
async fn ensure_referrers_tag(t: &TargetCopy, referrers: &plan::Referrers) -> Result<(), TargetError> {
    let api = t.session.url(&format!(
        "{}/referrers/{}",
        t.repository(),
        referrers.subject
    ));
    let res = t
        .session
        .send(&t.scopes, "list referrers", || {
            t.session
                .http()
                .get(api.clone())
                .header(header::ACCEPT, "application/vnd.oci.image.index.v1+json")
        })
        .await?;
    if res.status() == StatusCode::OK
        && header_str(&res, "content-type")
            .is_some_and(|c| c.starts_with("application/vnd.oci.image.index.v1+json"))
    {
        // The registry keeps referrers itself (it read `subject` when the manifest was pushed).
        return Ok(());
    }
    let tag = referrers_tag(&referrers.subject);
    let existing = fetch_manifest(&t.session, t.repository(), &t.scopes, &tag)
        .await
        .map_err(|source| TargetError::ReadReferrersTag { tag: tag.clone(), source })?;
    let index = match existing {
        None => match &referrers.fallback_index {
            Some(source_index) => source_index.clone(),
            None => referrers_index(&referrers.descriptors, Vec::new()),
        },
        Some(existing) => {
            let json: Value = serde_json::from_slice(&existing.bytes).unwrap_or(json!({}));
            let have = plan::index_descriptors(&json);
            let known: HashSet<&str> = have
                .iter()
                .filter_map(|d| d.get("digest").and_then(Value::as_str))
                .collect();
            let missing: Vec<Value> = referrers
                .descriptors
                .iter()
                .filter(|d| {
                    d.get("digest")
                        .and_then(Value::as_str)
                        .is_some_and(|digest| !known.contains(digest))
                })
                .cloned()
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            referrers_index(&missing, have)
        }
    };
    push_manifest(t, &index, &tag).await
}

/// An OCI index of `existing` followed by `added` descriptors.
fn referrers_index(added: &[Value], mut existing: Vec<Value>) -> Manifest {
    existing.extend(added.iter().cloned());
    let media_type = "application/vnd.oci.image.index.v1+json";
    let bytes = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": existing,
    }))
    .expect("JSON of JSON values");
    Manifest {
        digest: sha256_digest(&bytes),
        media_type: media_type.to_string(),
        bytes: bytes.into(),
        blobs: Vec::new(),
        children: Vec::new(),
    }
}

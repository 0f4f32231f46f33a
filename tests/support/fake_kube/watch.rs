//! `?watch=true`: newline-delimited `{"type","object"}` events after a resourceVersion, replayed
//! from the store's bounded history, as S12 recorded them: without a resourceVersion (or with
//! "0") the current state first as ADDED, then — with `allowWatchBookmarks` — a BOOKMARK
//! annotated `k8s.io/initial-events-end`; from an explicit resourceVersion no replay and no such
//! bookmark; from one older than the history an HTTP 200 whose only line is an ERROR event with
//! the 410 `Status`; a periodic BOOKMARK with the latest resourceVersion.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::response::Response;
use serde_json::{json, Value};

use super::selectors::{FieldSelector, LabelSelector};
use super::store::{ApiError, EventType, Res};
use super::Shared;

/// One event line, serialized straight from the stored object (`json!` would copy it first).
fn line(kind: &str, object: &Value) -> Bytes {
    let mut s = format!("{{\"type\":\"{kind}\",\"object\":");
    s.push_str(&object.to_string());
    s.push_str("}\n");
    Bytes::from(s)
}

/// A BOOKMARK's object: kind, apiVersion, resourceVersion, and the empty shell of the kind's
/// required fields the real server serialises with it.
fn bookmark(r: &Res, rv: u64, initial_end: bool) -> Value {
    let mut b = json!({"kind": r.kind, "apiVersion": r.api_version(), "metadata": {"resourceVersion": rv.to_string()}});
    if initial_end {
        b["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let shell = match r.plural {
        "pods" => json!({"spec": {"containers": null}, "status": {}}),
        "jobs" => json!({"spec": {"template": {"metadata": {}, "spec": {"containers": null}}}, "status": {}}),
        "deployments" => json!({"spec": {"replicas": 0, "selector": null, "template": {"metadata": {}, "spec": {"containers": null}}, "strategy": {}}, "status": {}}),
        "events" => json!({"involvedObject": {}, "source": {}, "firstTimestamp": null, "lastTimestamp": null, "eventTime": null, "reportingComponent": "", "reportingInstance": ""}),
        _ => json!({}),
    };
    for (k, v) in shell.as_object().into_iter().flatten() {
        b[k] = v.clone();
    }
    b
}

pub(crate) fn serve(
    sh: Arc<Shared>,
    r: &'static Res,
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let from = q.get("resourceVersion").cloned().unwrap_or_default();
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = q.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).map(Duration::from_secs).unwrap_or(Duration::from_secs(1800));
    // Streaming lists (`watcher::Config::streaming_lists`): the current state as ADDED events,
    // then a BOOKMARK annotated `k8s.io/initial-events-end`, then the changes.
    let initial_events = q.get("sendInitialEvents").is_some_and(|v| v == "true");
    if initial_events && !bookmarks {
        return Err(ApiError::invalid(r, "", "allowWatchBookmarks: Required value: allowWatchBookmarks must be set to true when sendInitialEvents is requested"));
    }
    let start: Option<u64> = if from.is_empty() || from == "0" || initial_events {
        None
    } else {
        Some(from.parse().map_err(|_| ApiError::bad_request(format!("resourceVersion: Invalid value: \"{from}\"")))?)
    };
    let (tx, resp) = super::api::streamed("application/json");
    {
        let mut w = sh.watches.lock().unwrap();
        let c = w.entry(r.plural.to_string()).or_default();
        c.opened += 1;
        c.open += 1;
    }
    let matches = move |o: &Value| labels.matches(o) && fields.matches(o) && ns.as_deref().is_none_or(|n| o["metadata"]["namespace"].as_str() == Some(n));
    tokio::spawn(async move {
        let mut changes = sh.store.subscribe();
        let mut drops = sh.drop_watches.subscribe();
        drops.borrow_and_update();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + sh.opts.bookmark_interval, sh.opts.bookmark_interval);
        let mut pos = match start {
            Some(rv) => rv,
            None => {
                // No resourceVersion: the current state as synthetic ADDED events first.
                changes.borrow_and_update();
                let (items, rv) = sh.store.list_matching(r, None, &matches);
                for o in &items {
                    if tx.send(line("ADDED", o)).await.is_err() {
                        return finish(&sh, r);
                    }
                }
                // The end of the initial state, for any client that asked for bookmarks.
                if bookmarks && tx.send(line("BOOKMARK", &bookmark(r, rv, true))).await.is_err() {
                    return finish(&sh, r);
                }
                rv
            }
        };
        'outer: loop {
            changes.borrow_and_update();
            match sh.store.events_since(pos) {
                Err(e) => {
                    let _ = tx.send(line("ERROR", &e.status())).await;
                    break;
                }
                Ok((events, now)) => {
                    for e in events {
                        if e.resource != r.plural {
                            continue;
                        }
                        let kind = match (e.kind, e.prev.as_deref().map(&matches), matches(&e.object)) {
                            (EventType::Modified, Some(true), true) => "MODIFIED",
                            (EventType::Modified, Some(false), true) => "ADDED",
                            (EventType::Modified, Some(true), false) => "DELETED",
                            (EventType::Added, _, true) => "ADDED",
                            (EventType::Deleted, _, true) => "DELETED",
                            _ => continue,
                        };
                        if tx.send(line(kind, &e.object)).await.is_err() {
                            break 'outer;
                        }
                    }
                    // A resourceVersion from the future: nothing until the store gets there.
                    pos = pos.max(now);
                }
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = drops.changed() => break,
                _ = tokio::time::sleep_until(deadline) => break,
                _ = tx.closed() => break,
                _ = sh.shutdown.cancelled() => break,
                _ = tick.tick(), if bookmarks => {
                    if tx.send(line("BOOKMARK", &bookmark(r, pos, false))).await.is_err() {
                        break;
                    }
                }
            }
        }
        finish(&sh, r)
    });
    Ok(resp)
}

fn finish(sh: &Shared, r: &Res) {
    if let Some(c) = sh.watches.lock().unwrap().get_mut(r.plural) {
        c.open -= 1;
    }
}

//! The three patch types a client may send: JSON merge patch (RFC 7386) and JSON patch
//! (RFC 6902) from the `json-patch` crate, and strategic merge patch (merge patch whose lists of
//! containers, env, volumes, … merge by their key instead of being replaced), which that crate
//! does not have.

use serde_json::{Map, Value};

/// RFC 7386: objects merge recursively, `null` removes, anything else replaces.
pub use ::json_patch::merge;

/// The merge key of the lists Kiln's kinds have (`patchMergeKey` in the Kubernetes types).
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers" | "initContainers" | "ephemeralContainers" | "env" | "volumes" | "imagePullSecrets" | "containerStatuses"
        | "initContainerStatuses" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ports" => "containerPort",
        "conditions" => "type",
        "ownerReferences" => "uid",
        _ => return None,
    })
}

/// Strategic merge patch: as `merge`, but lists with a merge key merge element by element
/// (`$patch: delete` removes one), `finalizers` is a set union, and the `$setElementOrder` /
/// `$retainKeys` directives are accepted and ignored.
pub fn strategic(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut p = p.clone();
        p.remove("$patch");
        *target = Value::Object(p);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if k.starts_with("$setElementOrder/") || k == "$retainKeys" || k == "$patch" {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match (merge_key(k), v, t.get_mut(k)) {
            (Some(key), Value::Array(items), Some(Value::Array(existing))) => {
                for item in items {
                    let id = item.get(key).cloned();
                    let pos = id.as_ref().and_then(|id| existing.iter().position(|e| e.get(key) == Some(id)));
                    let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                    match (pos, delete) {
                        (Some(i), true) => {
                            existing.remove(i);
                        }
                        (None, true) => {}
                        (Some(i), false) => strategic(&mut existing[i], item),
                        (None, false) => existing.push(item.clone()),
                    }
                }
            }
            (None, Value::Array(items), Some(Value::Array(existing))) if k == "finalizers" => {
                for item in items {
                    if !existing.contains(item) {
                        existing.push(item.clone());
                    }
                }
            }
            (_, Value::Object(_), _) => strategic(t.entry(k.clone()).or_insert(Value::Null), v),
            _ => {
                t.insert(k.clone(), strip_directives(v));
            }
        }
    }
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Array(items) => Value::Array(
            items.iter().filter(|i| i.get("$patch").and_then(Value::as_str) != Some("delete")).map(strip_directives).collect(),
        ),
        Value::Object(m) => Value::Object(m.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), strip_directives(v))).collect()),
        other => other.clone(),
    }
}

/// RFC 6902. All or nothing: an op that fails leaves the document unchanged.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    let ops: ::json_patch::Patch = serde_json::from_value(ops.clone()).map_err(|e| format!("invalid JSON patch: {e}"))?;
    ::json_patch::patch(target, &ops).map_err(|e| e.to_string())
}

//! The three patch types a client may send: JSON merge patch (RFC 7386), strategic merge patch
//! (merge patch whose lists of containers, env, volumes, … merge by their key instead of being
//! replaced), and JSON patch (RFC 6902).

use serde_json::{Map, Value};

/// RFC 7386: objects merge recursively, `null` removes, anything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

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

fn unescape(seg: &str) -> String {
    seg.replace("~1", "/").replace("~0", "~")
}

fn parent<'a>(doc: &'a mut Value, path: &str) -> Result<(&'a mut Value, String), String> {
    let segs: Vec<String> = path.split('/').skip(1).map(unescape).collect();
    let (last, init) = segs.split_last().ok_or_else(|| format!("invalid path {path:?}"))?;
    let mut cur = doc;
    for s in init {
        cur = match cur {
            Value::Object(m) => m.get_mut(s).ok_or_else(|| format!("path {path:?} does not exist"))?,
            Value::Array(a) => s.parse::<usize>().ok().and_then(|i| a.get_mut(i)).ok_or_else(|| format!("path {path:?} does not exist"))?,
            _ => return Err(format!("path {path:?} does not exist")),
        };
    }
    Ok((cur, last.clone()))
}

fn get(doc: &Value, path: &str) -> Result<Value, String> {
    doc.pointer(path).cloned().ok_or_else(|| format!("path {path:?} does not exist"))
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (p, last) = parent(doc, path)?;
    match p {
        Value::Object(m) => m.remove(&last).ok_or_else(|| format!("path {path:?} does not exist")),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| format!("invalid index in {path:?}"))?;
            if i < a.len() { Ok(a.remove(i)) } else { Err(format!("path {path:?} does not exist")) }
        }
        _ => Err(format!("path {path:?} does not exist")),
    }
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (p, last) = parent(doc, path)?;
    match p {
        Value::Object(m) => {
            m.insert(last, value);
            Ok(())
        }
        Value::Array(a) => {
            let i = if last == "-" { a.len() } else { last.parse().map_err(|_| format!("invalid index in {path:?}"))? };
            if i > a.len() {
                return Err(format!("index out of bounds in {path:?}"));
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err(format!("path {path:?} does not exist")),
    }
}

/// RFC 6902. All or nothing: an op that fails leaves the document unchanged.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops.as_array().ok_or("a JSON patch is an array of operations")?;
    let mut doc = target.clone();
    for op in ops {
        let path = op["path"].as_str().ok_or("operation without path")?;
        match op["op"].as_str().unwrap_or("") {
            "add" => add(&mut doc, path, op["value"].clone())?,
            "remove" => {
                remove(&mut doc, path)?;
            }
            "replace" => {
                remove(&mut doc, path)?;
                add(&mut doc, path, op["value"].clone())?;
            }
            "move" => {
                let from = op["from"].as_str().ok_or("move without from")?;
                let v = remove(&mut doc, from)?;
                add(&mut doc, path, v)?;
            }
            "copy" => {
                let from = op["from"].as_str().ok_or("copy without from")?;
                let v = get(&doc, from)?;
                add(&mut doc, path, v)?;
            }
            "test" => {
                if get(&doc, path)? != op["value"] {
                    return Err(format!("testing value {path} failed"));
                }
            }
            other => return Err(format!("unexpected op {other:?}")),
        }
    }
    *target = doc;
    Ok(())
}

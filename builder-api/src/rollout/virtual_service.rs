//! An Istio VirtualService, as a canary with `traffic: istio` weighs it: the route weights of the
//! two destinations whose subsets are the stable and the canary one. Read and written as a
//! generic object (kube's `DynamicObject` with its `ApiResource`): Kiln needs two fields of it,
//! not an Istio crate.
//!
//! The weights are set with a JSON merge patch of `spec.http` (a merge patch replaces a list
//! whole, so the patch carries the routes as read, only the weights changed) that also carries
//! the `resourceVersion` read: if the owner changed the VirtualService in between, the server
//! answers 409 and Kiln reads it again, so it never writes back routes it did not see.

use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::Api;
use serde_json::{json, Value};

use super::deployment::CALL_TIMEOUT;

/// `networking.istio.io/v1` `VirtualService`.
pub fn api_resource() -> ApiResource {
    ApiResource {
        group: "networking.istio.io".into(),
        version: "v1".into(),
        api_version: "networking.istio.io/v1".into(),
        kind: "VirtualService".into(),
        plural: "virtualservices".into(),
    }
}

pub fn api(client: kube::Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client, namespace, &api_resource())
}

/// Why the weights could not be set.
#[derive(Debug, thiserror::Error)]
pub enum VirtualServiceError {
    #[error("VirtualService {name} does not exist (a canary with traffic: istio weighs its routes)")]
    Missing { name: String },
    #[error("VirtualService {name} has no http route to both subsets {stable:?} and {canary:?}")]
    NoRoute { name: String, stable: String, canary: String },
    #[error("reading VirtualService {name}: {source}")]
    Read { name: String, source: kube::Error },
    #[error("patching VirtualService {name}: {source}")]
    Patch { name: String, source: kube::Error },
    #[error("VirtualService {name}: no answer in {timeout:?}", timeout = CALL_TIMEOUT)]
    Unanswered { name: String },
    #[error("VirtualService {name} kept changing while Kiln set its weights")]
    Contended { name: String },
}

/// Which subsets get which weight.
#[derive(Debug, Clone, Copy)]
pub struct Weights<'a> {
    pub stable_subset: &'a str,
    pub canary_subset: &'a str,
    pub stable: u8,
    pub canary: u8,
}

/// `spec.http` with the weights set; None when no route has both subsets.
pub fn weighed(http: &Value, w: &Weights<'_>) -> Option<Value> {
    let mut http = http.clone();
    let mut found = false;
    for route in http.as_array_mut()?.iter_mut() {
        let Some(dests) = route["route"].as_array_mut() else { continue };
        let has = |s: &str| dests.iter().any(|d| d["destination"]["subset"] == s);
        if !(has(w.stable_subset) && has(w.canary_subset)) {
            continue;
        }
        found = true;
        for d in dests.iter_mut() {
            if d["destination"]["subset"] == w.stable_subset {
                d["weight"] = json!(w.stable);
            } else if d["destination"]["subset"] == w.canary_subset {
                d["weight"] = json!(w.canary);
            }
        }
    }
    found.then_some(http)
}

/// Sets the weights; a VirtualService that changed between the read and the write (409) is read
/// again, a few times.
pub async fn set_weights(api: &Api<DynamicObject>, name: &str, w: &Weights<'_>) -> Result<(), VirtualServiceError> {
    for _ in 0..5 {
        let vs = match tokio::time::timeout(CALL_TIMEOUT, api.get(name)).await {
            Ok(Ok(vs)) => vs,
            Ok(Err(kube::Error::Api(s))) if s.code == 404 => return Err(VirtualServiceError::Missing { name: name.into() }),
            Ok(Err(source)) => return Err(VirtualServiceError::Read { name: name.into(), source }),
            Err(_) => return Err(VirtualServiceError::Unanswered { name: name.into() }),
        };
        let no_route = || VirtualServiceError::NoRoute { name: name.into(), stable: w.stable_subset.into(), canary: w.canary_subset.into() };
        let http = weighed(&vs.data["spec"]["http"], w).ok_or_else(no_route)?;
        if http == vs.data["spec"]["http"] {
            return Ok(());
        }
        let patch = json!({"metadata": {"resourceVersion": vs.metadata.resource_version}, "spec": {"http": http}});
        match tokio::time::timeout(CALL_TIMEOUT, api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(kube::Error::Api(s))) if s.code == 409 => continue,
            Ok(Err(source)) => return Err(VirtualServiceError::Patch { name: name.into(), source }),
            Err(_) => return Err(VirtualServiceError::Unanswered { name: name.into() }),
        }
    }
    Err(VirtualServiceError::Contended { name: name.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_routes_to_both_subsets_are_weighed() {
        let http = json!([
            {"match": [{"uri": {"prefix": "/admin"}}], "route": [{"destination": {"host": "web", "subset": "stable"}}]},
            {"route": [{"destination": {"host": "web", "subset": "stable"}, "weight": 100},
                       {"destination": {"host": "web", "subset": "canary"}, "weight": 0}]}
        ]);
        let w = Weights { stable_subset: "stable", canary_subset: "canary", stable: 75, canary: 25 };
        let out = weighed(&http, &w).unwrap();
        assert_eq!(out[0], http[0]);
        assert_eq!((out[1]["route"][0]["weight"].as_u64(), out[1]["route"][1]["weight"].as_u64()), (Some(75), Some(25)));
        assert!(weighed(&json!([http[0].clone()]), &w).is_none());
    }
}

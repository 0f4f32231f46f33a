//! The app's Service, as blue-green switches it: its selector picks one colour with the
//! `kiln.dev/colour` label, and a switch is one strategic merge patch of that one key (`null`
//! removes it), so the Service's other selector labels and its ports stay as the owner wrote
//! them.

use k8s_openapi::api::core::v1::Service;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;

use super::deployment::CALL_TIMEOUT;

/// Why the Service could not be read or switched.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("Service {name} does not exist (blue-green switches the selector of the app's Service)")]
    Missing { name: String },
    #[error("Service {name} has no selector to switch")]
    NoSelector { name: String },
    #[error("reading Service {name}: {source}")]
    Read { name: String, source: kube::Error },
    #[error("patching Service {name}: {source}")]
    Patch { name: String, source: kube::Error },
    #[error("Service {name}: no answer in {timeout:?}", timeout = CALL_TIMEOUT)]
    Unanswered { name: String },
}

pub async fn get(api: &Api<Service>, name: &str) -> Result<Service, ServiceError> {
    let svc = match tokio::time::timeout(CALL_TIMEOUT, api.get(name)).await {
        Ok(Ok(s)) => s,
        Ok(Err(kube::Error::Api(s))) if s.code == 404 => return Err(ServiceError::Missing { name: name.into() }),
        Ok(Err(source)) => return Err(ServiceError::Read { name: name.into(), source }),
        Err(_) => return Err(ServiceError::Unanswered { name: name.into() }),
    };
    if svc.spec.as_ref().and_then(|s| s.selector.as_ref()).is_none_or(|s| s.is_empty()) {
        return Err(ServiceError::NoSelector { name: name.into() });
    }
    Ok(svc)
}

/// The value the Service's selector requires for `key`.
pub fn selector_value(svc: &Service, key: &str) -> Option<String> {
    svc.spec.as_ref()?.selector.as_ref()?.get(key).cloned()
}

/// Sets (or with None removes) one key of the Service's selector.
pub async fn select(api: &Api<Service>, name: &str, key: &str, value: Option<&str>) -> Result<(), ServiceError> {
    let patch = json!({"spec": {"selector": {key: value}}});
    match tokio::time::timeout(CALL_TIMEOUT, api.patch(name, &PatchParams::default(), &Patch::Strategic(&patch))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(source)) => Err(ServiceError::Patch { name: name.into(), source }),
        Err(_) => Err(ServiceError::Unanswered { name: name.into() }),
    }
}

//! The APM records of the model: an app's choice of agent and what an injection did to a build's
//! image. The injection itself is `crate::apm`.

use serde::{Deserialize, Serialize};

/// An app's APM setting (`settings.apm`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApmSetting {
    pub agent: String,
    /// The version; the last one listed in the config when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// What an injection did, as the image step reports it and the build record keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApmApplied {
    pub agent: String,
    pub version: String,
    /// The image before injection, by digest: what a re-injection starts from.
    pub original_image: String,
}

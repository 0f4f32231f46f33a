//! How a subscription releases a new image: `rolling` (the Deployment's own rolling update, the
//! default), `blue-green` ([`super::blue_green`]) or `canary` ([`super::canary`]). Stored on the
//! subscription as JSON with every default filled in, so what the API shows is what runs; each
//! rollout copies it when queued.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Strategy {
    Rolling,
    BlueGreen(BlueGreen),
    Canary(Canary),
}

/// Who moves a release past a point where it could stop: Kiln on its own, or a person with
/// `POST …/promote` (and `…/abort`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Promote {
    #[default]
    Auto,
    Manual,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlueGreen {
    /// The app's Service whose selector picks the live colour; by default the Deployment's name.
    #[serde(default)]
    pub service: Option<String>,
    /// A colour is Available when all its replicas have been ready this long (the colour
    /// Deployments' `minReadySeconds`).
    #[serde(default = "default_min_ready_secs")]
    pub min_ready_secs: u32,
    /// How long the previous colour keeps running after the switch: a rollback within it is a
    /// switch back, no pod started.
    #[serde(default = "default_keep_previous_secs")]
    pub keep_previous_secs: u64,
    #[serde(default)]
    pub promote: Promote,
}

/// How canary traffic is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Traffic {
    /// A `<name>-canary` Deployment under the same Service: the split is the replica count.
    #[default]
    Replicas,
    /// Route weights of the app's Istio VirtualService, between a stable and a canary subset.
    Istio,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// Percent of traffic on the new image at each step, rising, the last 100.
    #[serde(default = "default_steps")]
    pub steps: Vec<u8>,
    /// How long each step below 100 holds before the next (`promote: auto`).
    #[serde(default = "default_pause_secs")]
    pub pause_secs: u64,
    #[serde(default)]
    pub promote: Promote,
    /// How long a step's canary pods have to be Ready; one not Ready after it, or no longer
    /// Ready during the step, aborts the release.
    #[serde(default = "default_window_secs")]
    pub window_secs: u64,
    #[serde(default)]
    pub traffic: Traffic,
    /// `traffic: istio`: the VirtualService (by default the Deployment's name) and its subsets.
    #[serde(default)]
    pub virtual_service: Option<String>,
    #[serde(default = "default_stable_subset")]
    pub stable_subset: String,
    #[serde(default = "default_canary_subset")]
    pub canary_subset: String,
}

fn default_min_ready_secs() -> u32 {
    10
}
fn default_keep_previous_secs() -> u64 {
    600
}
fn default_steps() -> Vec<u8> {
    vec![10, 50, 100]
}
fn default_pause_secs() -> u64 {
    60
}
fn default_window_secs() -> u64 {
    120
}
fn default_stable_subset() -> String {
    "stable".into()
}
fn default_canary_subset() -> String {
    "canary".into()
}

/// Why a strategy as given is not one.
#[derive(Debug, thiserror::Error)]
pub enum StrategyError {
    #[error("strategy: {0} (kind is one of rolling, blue-green, canary)")]
    Shape(#[from] serde_json::Error),
    #[error("canary steps must rise from above 0 to exactly 100, as [10, 50, 100]; got {0:?}")]
    Steps(Vec<u8>),
    #[error("{field} {value:?} is not a DNS label")]
    Name { field: &'static str, value: String },
}

impl Strategy {
    /// From the API's `strategy`: `"rolling"`, `"blue-green"`, `"canary"` (every setting its
    /// default) or an object with `kind` and settings.
    pub fn from_json(v: &serde_json::Value) -> Result<Strategy, StrategyError> {
        let v = match v {
            serde_json::Value::String(kind) => serde_json::json!({ "kind": kind }),
            other => other.clone(),
        };
        let s: Strategy = serde_json::from_value(v)?;
        s.check()?;
        Ok(s)
    }

    /// A stored strategy (written by [`Strategy::to_json`]); anything unreadable is rolling,
    /// today's behaviour, rather than a release that cannot start.
    pub fn from_stored(v: &serde_json::Value) -> Strategy {
        Strategy::from_json(v).unwrap_or(Strategy::Rolling)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a strategy serialises")
    }

    /// `rolling`, `blue-green`, `canary`.
    pub fn kind(&self) -> &'static str {
        match self {
            Strategy::Rolling => "rolling",
            Strategy::BlueGreen(_) => "blue-green",
            Strategy::Canary(_) => "canary",
        }
    }

    fn check(&self) -> Result<(), StrategyError> {
        let name = |field: &'static str, v: &Option<String>| match v {
            Some(n) if crate::validate::dns_label(field, n).is_err() => Err(StrategyError::Name { field, value: n.clone() }),
            _ => Ok(()),
        };
        match self {
            Strategy::Rolling => Ok(()),
            Strategy::BlueGreen(b) => name("service", &b.service),
            Strategy::Canary(c) => {
                let rising = c.steps.windows(2).all(|w| w[0] < w[1]);
                if c.steps.is_empty() || !rising || c.steps[0] == 0 || c.steps.last() != Some(&100) {
                    return Err(StrategyError::Steps(c.steps.clone()));
                }
                name("virtual_service", &c.virtual_service)?;
                name("stable_subset", &Some(c.stable_subset.clone()))?;
                name("canary_subset", &Some(c.canary_subset.clone()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategies_parse_with_defaults_and_bad_ones_are_refused() {
        assert_eq!(Strategy::from_json(&json!("rolling")).unwrap(), Strategy::Rolling);
        let Strategy::BlueGreen(b) = Strategy::from_json(&json!({"kind": "blue-green", "promote": "manual"})).unwrap() else { panic!() };
        assert_eq!((b.promote, b.keep_previous_secs, b.service), (Promote::Manual, 600, None));
        let Strategy::Canary(c) = Strategy::from_json(&json!({"kind": "canary", "steps": [25, 100], "traffic": "istio"})).unwrap() else { panic!() };
        assert_eq!((c.steps, c.traffic, c.stable_subset.as_str()), (vec![25, 100], Traffic::Istio, "stable"));
        for bad in [
            json!("sometimes"),
            json!({"kind": "canary", "steps": [50, 25, 100]}),
            json!({"kind": "canary", "steps": [10, 50]}),
            json!({"kind": "canary", "steps": [0, 100]}),
            json!({"kind": "canary", "steps": []}),
            json!({"kind": "blue-green", "colour": "red"}),
            json!({"kind": "blue-green", "service": "Not A Label"}),
        ] {
            assert!(Strategy::from_json(&bad).is_err(), "{bad}");
        }
        // What is stored reads back as itself.
        let s = Strategy::from_json(&json!("canary")).unwrap();
        assert_eq!(Strategy::from_stored(&s.to_json()), s);
    }
}

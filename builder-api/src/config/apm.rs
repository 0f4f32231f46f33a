//! APM agents (`[apm]`): named, versioned agent sources and the JVM options that load them.

use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

/// APM agents an app may ask for (`settings.apm`): named, versioned sources of agent files, and
/// the JVM options that load them. See `crate::apm`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApmConfig {
    pub agents: Vec<ApmAgent>,
}

/// One version of one agent. A version names fixed content: its layer is built once and cached
/// by name and version, so publish changed files under a new version.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApmAgent {
    pub name: String,
    pub version: String,
    pub source: AgentSource,
    /// Appended to the image's `JAVA_TOOL_OPTIONS`. Placeholders: `{agent}` (the name),
    /// `{version}`, `{app}`, `{tenant}`. The agent's files are under `/opt/apm/` in the image.
    #[serde(default = "default_java_options")]
    pub java_options: String,
}

/// Where an agent's files come from; exactly one of `dir`, `tar_gz`, `image` (with `path`).
/// Their contents go to `/opt/apm/` in the image.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSource {
    /// A directory on the disk of whatever runs the image step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// A `.tar.gz` (or `.tar`) on that disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tar_gz: Option<PathBuf>,
    /// An image in a registry (works in a cluster); the files under `path` in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl ApmAgent {
    /// `java_options` with its placeholders filled. App and tenant names are DNS labels (checked
    /// when created), so they cannot split or inject an option.
    pub fn java_options_for(&self, app: &str, tenant: &str) -> String {
        self.java_options
            .replace("{agent}", &self.name)
            .replace("{version}", &self.version)
            .replace("{app}", app)
            .replace("{tenant}", tenant)
    }
}

pub fn default_java_options() -> String {
    "-javaagent:/opt/apm/{agent}.jar -Dapm.service.name={app} -Dapm.tenant={tenant}".into()
}

impl ApmConfig {
    /// Names and versions are path and tag material (the layer cache, the injected image's tag):
    /// `[A-Za-z0-9._-]`, no duplicates; every source is exactly one kind; options use known
    /// placeholders only.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid { field: "apm.agents", message };
        let token = |s: &str| {
            !s.is_empty() && s.len() <= 40 && !s.starts_with(['.', '-']) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        for (i, a) in self.agents.iter().enumerate() {
            if !token(&a.name) || !token(&a.version) {
                return Err(invalid(format!(
                    "agent {:?} version {:?}: names and versions are 1-40 of A-Z a-z 0-9 . _ - (not starting with . or -)",
                    a.name, a.version
                )));
            }
            if self.agents[..i].iter().any(|b| b.name == a.name && b.version == a.version) {
                return Err(invalid(format!("agent {} version {} is listed twice", a.name, a.version)));
            }
            let s = &a.source;
            let kinds = [s.dir.is_some(), s.tar_gz.is_some(), s.image.is_some()].iter().filter(|k| **k).count();
            if kinds != 1 || s.image.is_some() != s.path.is_some() {
                return Err(invalid(format!(
                    "agent {} {}: source needs exactly one of dir, tar_gz, or image with path",
                    a.name, a.version
                )));
            }
            let mut rest = a.java_options.as_str();
            while let Some(open) = rest.find('{') {
                let after = &rest[open + 1..];
                let close = after.find('}').ok_or_else(|| invalid(format!("agent {}: unclosed {{ in java_options", a.name)))?;
                if !["agent", "version", "app", "tenant"].contains(&&after[..close]) {
                    return Err(invalid(format!(
                        "agent {}: java_options placeholder {{{}}} is not one of {{agent}}, {{version}}, {{app}}, {{tenant}}",
                        a.name,
                        &after[..close]
                    )));
                }
                rest = &after[close + 1..];
            }
        }
        Ok(())
    }
}

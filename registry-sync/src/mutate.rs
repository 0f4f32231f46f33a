//! Image mutation: an image already in a registry, plus layers and config edits, pushed as a new
//! image — how an APM agent goes into any Java image, however it was built.
//!
//! This is assembly with the existing image as the base ([`crate::assemble`]): the image's layers
//! are never downloaded; each is found in the target repository (HEAD), mounted from its
//! repository, or streamed registry to registry. Only the new layers, the config and the manifest
//! are uploaded. Entrypoint, cmd, workdir and the rest of the config stay as the image has them.
//!
//! ## Is it a Java image?
//! Decided from the config alone, because looking into the layers would mean downloading every
//! one of them (the point of mutation is not to): an image is Java when its env sets
//! `JAVA_HOME`, `JAVA_VERSION`, `JDK_HOME`, `JRE_HOME` or `JAVA_TOOL_OPTIONS` (every JDK/JRE base
//! image — Temurin, OpenJDK, Corretto, Debian's — sets one of the first two), or when its
//! entrypoint or cmd runs `java` or names a `.jar` (distroless Java, Jib, Kiln's own Maven
//! images). An image that does neither is refused before anything is pushed.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::assemble::{self, AssembleError, AssembleSpec, BaseRefusal, PushedImage};
use crate::auth::RegistryOptions;
use crate::client::Platform;
use crate::layer::BuiltLayer;
use crate::reference::ImageRef;

/// What to change in an existing image.
#[derive(Debug, Clone)]
pub struct MutateSpec {
    /// The image to start from (best pinned by digest).
    pub image: ImageRef,
    /// Where the result goes; must carry a tag.
    pub target: ImageRef,
    /// Layers to append, bottom to top.
    pub layers: Vec<BuiltLayer>,
    /// Set or override.
    pub env: Vec<(String, String)>,
    /// Put before the image's value with a space, or set when it has none: defaults that the
    /// image's own value overrides where the last option wins (`JAVA_TOOL_OPTIONS`).
    pub env_prepend: Vec<(String, String)>,
    /// Appended to the image's value with a space, or set when it has none.
    pub env_append: Vec<(String, String)>,
    /// Merged over the image's labels.
    pub labels: BTreeMap<String, String>,
    /// Refuse an image that does not look like a Java image (see the module docs); the value
    /// names what needs the JVM, for the refusal (`an APM agent`).
    pub require_java: Option<String>,
    /// The history entries' `created_by` (`kiln apm: tracer 1.2`).
    pub created_by: String,
    pub platform: Platform,
}

impl MutateSpec {
    pub fn new(image: ImageRef, target: ImageRef) -> MutateSpec {
        MutateSpec {
            image,
            target,
            layers: Vec::new(),
            env: Vec::new(),
            env_prepend: Vec::new(),
            env_append: Vec::new(),
            labels: BTreeMap::new(),
            require_java: None,
            created_by: "kiln mutate".into(),
            platform: Platform::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MutateError {
    #[error(
        "{image} does not look like a Java image ({why}); {needs} needs a JVM, so nothing was pushed"
    )]
    NotJava { image: String, why: String, needs: String },
    #[error(transparent)]
    Assemble(#[from] AssembleError),
}

/// Pushes `spec.image` + `spec.layers` with the config edits to `spec.target`.
pub async fn mutate_and_push(
    spec: &MutateSpec,
    opts: &RegistryOptions,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<PushedImage, MutateError> {
    let mut assemble = AssembleSpec::new(spec.target.clone());
    assemble.base = Some(spec.image.clone());
    assemble.prebuilt_layers = spec.layers.clone();
    assemble.env = spec.env.clone();
    assemble.env_prepend = spec.env_prepend.clone();
    assemble.env_append = spec.env_append.clone();
    assemble.labels = spec.labels.clone();
    assemble.keep_base_created = true;
    assemble.created_by = spec.created_by.clone();
    assemble.platform = spec.platform.clone();
    let require_java = spec.require_java.is_some();
    let check = move |config: &Value| match (require_java, java_evidence(config)) {
        (false, _) | (true, Some(_)) => Ok(()),
        (true, None) => Err(BaseRefusal(
            "no JAVA_HOME, JAVA_VERSION, JDK_HOME, JRE_HOME or JAVA_TOOL_OPTIONS in its env, \
             and its entrypoint and cmd run no java and name no .jar"
                .to_string(),
        )),
    };
    match assemble::assemble_checked(&assemble, opts, progress, &check).await {
        Ok(pushed) => Ok(pushed),
        Err(AssembleError::BaseRefused { base, reason }) => {
            Err(MutateError::NotJava { image: base, why: reason, needs: spec.require_java.clone().unwrap_or_default() })
        }
        Err(e) => Err(e.into()),
    }
}

/// Why an image config says "Java", or None (see the module docs).
pub fn java_evidence(config: &Value) -> Option<String> {
    const JAVA_ENV: [&str; 5] = ["JAVA_HOME", "JAVA_VERSION", "JDK_HOME", "JRE_HOME", "JAVA_TOOL_OPTIONS"];
    let inner = config.get("config")?;
    let strings = |key: &str| -> Vec<String> {
        inner
            .get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    for line in strings("Env") {
        let name = line.split_once('=').map_or(line.as_str(), |(k, _)| k);
        if JAVA_ENV.contains(&name) {
            return Some(format!("env {name}"));
        }
    }
    for key in ["Entrypoint", "Cmd"] {
        for arg in strings(key) {
            // Shell form (`sh -c "exec java -jar app.jar"`) is one string: look at its words.
            for word in arg.split_whitespace() {
                let base = word.rsplit('/').next().unwrap_or(word);
                if base == "java" || base.ends_with(".jar") {
                    return Some(format!("{} runs {word}", key.to_lowercase()));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn java_images_are_told_apart() {
        let c = |inner: Value| json!({ "config": inner });
        assert!(java_evidence(&c(json!({"Env": ["PATH=/bin", "JAVA_HOME=/opt/java"]}))).is_some());
        assert!(java_evidence(&c(json!({"Entrypoint": ["java", "-jar", "/app/app.jar"]}))).is_some());
        assert!(java_evidence(&c(json!({"Entrypoint": ["/usr/bin/java"]}))).is_some());
        assert!(java_evidence(&c(json!({"Cmd": ["sh", "-c", "exec java -cp /app Main"]}))).is_some());
        assert!(java_evidence(&c(json!({"Cmd": ["cat", "/message.txt"], "Env": ["PATH=/bin"]}))).is_none());
        assert!(java_evidence(&c(json!({"Entrypoint": ["/app/javalin-server"]}))).is_none());
        assert!(java_evidence(&json!({})).is_none());
    }
}

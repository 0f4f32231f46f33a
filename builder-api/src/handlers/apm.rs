//! `POST /api/v1/builds/{id}/apm`: inject another APM agent (or version) into a build's image
//! without rebuilding. It starts from the build's original image (before any agent), so agents
//! never stack, and pushes `<commit12>-apm-<agent>-<version>`. The build record then names the
//! new image, agent and version (the image to deploy); the original stays in `original_image`.
//! The answer comes when the push is done: a manifest read, one small layer and a config pushed.

use axum::extract::{Path, State};
use axum::Json;
use registry_sync::{AssembleError, ImageRef, MutateError};
use serde::Deserialize;
use serde_json::{json, Value};

use super::builds::visible_build;
use super::JsonBody;
use crate::apm::{self, ApmError};
use crate::audit::Audited;
use crate::auth::Principal;
use crate::context::AppState;
use crate::error::{ApiError, ApiResult};
use crate::store::BuildState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reinject {
    pub agent: String,
    /// The last configured version of the agent when unset.
    pub version: Option<String>,
}

pub async fn reinject(
    State(s): State<AppState>,
    who: Principal,
    Path(id): Path<i64>,
    JsonBody(req): JsonBody<Reinject>,
) -> ApiResult<(axum::Extension<Audited>, Json<Value>)> {
    let build = visible_build(&s, &who, id).await?;
    let original = match (build.state, build.original_image.as_ref().or(build.image.as_ref())) {
        (BuildState::Succeeded, Some(image)) => image.clone(),
        (state, _) => {
            return Err(ApiError::Conflict(format!(
                "build {id} is {}: only a succeeded build has an image to inject into",
                state.as_str()
            )))
        }
    };
    let agent = apm::find_agent(&s.config.apm, &req.agent, req.version.as_deref()).map_err(api_error)?;
    let app = super::apps::live_app_of(&s, &build).await?;
    let original = ImageRef::parse(&original).map_err(|e| ApiError::Internal(format!("stored image {original}: {e}")))?;
    let build_tag = &build.commit[..12.min(build.commit.len())];
    let target = format!("{}:{}", app.image_repository, apm::reinjected_tag(build_tag, agent));
    let target = ImageRef::parse(&target).map_err(|e| ApiError::Internal(format!("target {target}: {e}")))?;
    let opts = s.config.registry.options_for(target.registry());

    let layer = apm::agent_layer(agent, &s.config.store.data_dir.join("apm-layers"), &opts).await.map_err(api_error)?;
    let options = agent.java_options_for(&app.name, &app.tenant);
    let mut progress = |line: String| tracing::debug!(build = id, "apm: {line}");
    let pushed =
        apm::inject(&original, target, agent, layer, &options, &opts, &mut progress).await.map_err(api_error)?;
    let image = pushed.reference.to_string();
    s.store.set_build_reinjected(id, &image, &pushed.digest, &agent.name, &agent.version).await?;
    Ok((Audited::new(build.tenant_id, format!("build/{id}")), Json(json!({
        "build": id,
        "image": image,
        "digest": pushed.digest,
        "agent": agent.name,
        "version": agent.version,
        "original_image": original.to_string(),
    }))))
}

/// 422 for what the caller can change (agent, image kind), 502 for the registry, 500 otherwise.
fn api_error(e: ApmError) -> ApiError {
    match e {
        ApmError::UnknownAgent { .. } | ApmError::Mutate(MutateError::NotJava { .. }) => {
            ApiError::Unprocessable(e.to_string())
        }
        ApmError::Mutate(MutateError::Assemble(AssembleError::Registry(r))) => ApiError::BadGateway(r.to_string()),
        ApmError::SourceMissing { .. } | ApmError::Source { .. } => {
            ApiError::BadGateway(format!("the APM agent source is unusable: {e}"))
        }
        other => ApiError::Internal(other.to_string()),
    }
}

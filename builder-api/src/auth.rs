//! Bearer tokens → a [`Principal`]. Every `/api/v1` handler takes a `Principal` argument, so no
//! route can forget to authenticate; tenant scoping is checked by the `owned_by` helpers.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;

use crate::context::AppState;
use crate::error::ApiError;
pub use crate::store::Principal;

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::Unauthorized("missing bearer token (Authorization: Bearer …)".into()))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::Unauthorized("the Authorization header is not a bearer token".into()))?;
        if let Some(admin) = &state.config.server.admin_token {
            if bool::from(admin.as_bytes().ct_eq(token.as_bytes())) {
                return Ok(Principal::Admin);
            }
        }
        state
            .store
            .principal_for_token(token)
            .await?
            .ok_or_else(|| ApiError::Unauthorized("unknown or revoked token".into()))
    }
}

impl Principal {
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Tenant { .. } => Err(ApiError::Forbidden("this needs an admin token".into())),
        }
    }

    /// The tenant this principal acts in: its own, or for an admin the one named.
    pub fn tenant_scope(&self) -> Option<i64> {
        match self {
            Principal::Admin => None,
            Principal::Tenant { id, .. } => Some(*id),
        }
    }

    /// Whether an object of `tenant_id` is visible. Invisible objects answer 404, never 403,
    /// so another tenant's ids cannot be probed.
    pub fn sees(&self, tenant_id: i64) -> bool {
        self.tenant_scope().is_none_or(|own| own == tenant_id)
    }
}

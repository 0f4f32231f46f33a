//! Bearer tokens → a [`Principal`] with a [`Role`], and the one role check of the API.
//!
//! Which role each route needs is written in one place, the route table in `router.rs`; the
//! router wraps every route of that table in [`guard`], which authenticates, refuses a role
//! below the route's (403 with the reason), hands the `Principal` to the handler, and writes the
//! audit row of a mutating route once it succeeded. Handlers only scope by tenant: another
//! tenant's objects answer 404, never 403, so their ids and names cannot be probed.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::audit;
use crate::context::AppState;
use crate::error::ApiError;
pub use crate::store::{Principal, Role};
use crate::store::TokenLookup;

/// What the guard of one route knows: the state, and the route's entry of the table.
#[derive(Clone)]
pub struct RouteGuard {
    pub state: AppState,
    pub role: Role,
    /// The audit action of a mutating route (`build.trigger`); None for reads.
    pub action: Option<&'static str>,
}

/// The middleware around every API route (see the module comment).
pub async fn guard(State(g): State<RouteGuard>, mut req: Request, next: Next) -> Response {
    let who = match authenticate(&g.state, req.headers()).await {
        Ok(who) => who,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = who.require(g.role) {
        return e.into_response();
    }
    let Some(action) = g.action else {
        req.extensions_mut().insert(who);
        return next.run(req).await;
    };
    let client = audit::client_addr(&g.state, &req);
    let path = req.uri().path().to_string();
    req.extensions_mut().insert(who.clone());
    let res = next.run(req).await;
    if res.status().is_success() {
        audit::record(&g.state, &who, action, res.extensions().get::<audit::Audited>(), &path, client).await;
    }
    res
}

/// The principal of a request's bearer token; 401 with the reason otherwise.
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let header = headers
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
    match state.store.principal_for_token(token).await? {
        TokenLookup::Valid(who) => Ok(who),
        TokenLookup::Expired => Err(ApiError::Unauthorized("token expired".into())),
        TokenLookup::Unknown => Err(ApiError::Unauthorized("unknown or revoked token".into())),
    }
}

/// Handlers take the principal the guard authenticated. A handler mounted outside the route
/// table has none: that is a bug, answered 500 rather than served unchecked.
impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Principal>().cloned().ok_or_else(|| {
            ApiError::Internal(format!("{} is served without the role guard (not in router::api_routes)", parts.uri.path()))
        })
    }
}

impl Principal {
    pub fn role(&self) -> Role {
        match self {
            Principal::Admin => Role::Admin,
            Principal::Tenant { role, .. } => *role,
        }
    }

    /// The id of a tenant's token; None for the configured admin token.
    pub fn token_id(&self) -> Option<i64> {
        match self {
            Principal::Admin => None,
            Principal::Tenant { token_id, .. } => Some(*token_id),
        }
    }

    /// 403 with the reason when this principal's role is below `needed`.
    pub fn require(&self, needed: Role) -> Result<(), ApiError> {
        let own = self.role();
        if own >= needed {
            return Ok(());
        }
        Err(ApiError::Forbidden(if needed == Role::Admin {
            "this needs an admin token".into()
        } else {
            format!("this needs the {needed} role; this token is a {own} token")
        }))
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

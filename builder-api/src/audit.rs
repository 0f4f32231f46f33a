//! The audit log's writing side: the role guard (`auth::guard`) records every successful call of
//! a mutating route — who (token or admin), in which tenant, what action on which target, from
//! which address. Handlers say what they acted on by adding [`Audited`] to their answer; the
//! store keeps the rows (`store::audit`), `GET /api/v1/audit` reads them.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request};
use axum::Extension;

use crate::store::Principal;
use crate::context::AppState;
use crate::store::NewAuditEntry;

/// What a mutating handler acted on, as a response extension: `Extension(Audited::new(…))` in
/// its answer. The tenant is the object's (an admin acts in any tenant).
#[derive(Debug, Clone)]
pub struct Audited {
    pub tenant_id: Option<i64>,
    /// `build/42`, `app/api`, `token/7`.
    pub target: String,
}

impl Audited {
    pub fn new(tenant_id: i64, target: impl Into<String>) -> Extension<Audited> {
        Extension(Audited { tenant_id: Some(tenant_id), target: target.into() })
    }
}

/// The client's address: the socket's peer, or — only when `server.trust_forwarded_for` says a
/// proxy in front sets it — the first address of `X-Forwarded-For`. Requests served without a
/// socket (tests through the router) have neither.
pub fn client_addr(state: &AppState, req: &Request) -> Option<String> {
    if state.config.server.trust_forwarded_for {
        let forwarded = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            // Parsed, so only an address is ever stored, whatever the header carried.
            .and_then(|first| first.trim().parse::<IpAddr>().ok());
        if let Some(ip) = forwarded {
            return Some(ip.to_string());
        }
    }
    req.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip().to_string())
}

/// How the audit log names who acted: `admin`, or `token:ID:NAME` for a tenant's token. Rollouts
/// record who asked for a rollback the same way.
pub fn actor(who: &Principal) -> String {
    match who {
        Principal::Admin => "admin".to_string(),
        Principal::Tenant { token_id, token_name, .. } => format!("token:{token_id}:{token_name}"),
    }
}

/// Writes the row of one successful mutating call. A failed write is logged, not answered: the
/// change itself is done, and a 500 would tell the caller it was not.
pub async fn record(
    state: &AppState,
    who: &Principal,
    action: &str,
    audited: Option<&Audited>,
    path: &str,
    client_addr: Option<String>,
) {
    let (actor, token_id) = (actor(who), who.token_id());
    let entry = NewAuditEntry {
        actor,
        token_id,
        tenant_id: audited.and_then(|a| a.tenant_id).or(who.tenant_scope()),
        action: action.into(),
        target: audited.map_or_else(|| path.to_string(), |a| a.target.clone()),
        client_addr,
    };
    if let Err(e) = state.store.audit(&entry).await {
        tracing::error!(action, target = entry.target, "cannot write the audit log: {e}");
    }
}

//! Tenants and roles. The isolation matrix sends every route of the API table
//! (`builder_api::router::api_routes`, the table the router is built from) with every role of
//! tenant A at tenant B's objects, and expects 403 or 404 with none of B's data; a route the
//! matrix has no case for fails it, so a new route cannot be missed. Then roles on one's own
//! tenant, token expiry and revocation, and the audit log.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use builder_api::router::api_routes;
use builder_api::store::{NewBuild, NewSubscription, Role};
use serde_json::{json, Value};

use crate::support::fixtures::app_spec;
use crate::support::kiln::{TestKiln, ADMIN};

const SHA_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa0001";
const SHA_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb0002";

/// One tenant with one of everything: an app, a build, a subscription, tokens of every role.
struct World {
    name: String,
    id: i64,
    app: String,
    build_id: i64,
    subscription_id: i64,
    owner: String,
    developer: String,
    viewer: String,
    /// The id of the developer token (the one the matrix tries to revoke).
    developer_token_id: i64,
    /// What must never reach another tenant: names, repository, secrets, tokens.
    secrets: Vec<String>,
}

impl World {
    async fn new(kiln: &TestKiln, name: &str, app: &str, commit: &str) -> World {
        let owner = kiln.tenant(name).await;
        let letter = &name[name.len() - 1..];
        let hook_secret = format!("hook-secret-of-{name}");
        let git_token = format!("glpat-git-token-of-{name}");
        let mut spec = app_spec(
            app,
            &format!("http://127.0.0.1:9/{letter}/{app}.git"),
            &format!("{letter}/{app}"),
            &format!("127.0.0.1:9/{letter}/{app}"),
            &hook_secret,
        );
        spec["git_token"] = json!(git_token);
        let created = kiln.app(&owner, spec).await;
        let app_id = created["app"]["id"].as_i64().unwrap();
        let id = kiln.ctx.store.tenant_by_name(name).await.unwrap().unwrap().id;
        let build = kiln
            .ctx
            .store
            .create_build(&NewBuild { tenant_id: id, app_id, git_ref: None, commit: commit.into(), trigger: "manual".into(), commit_info: Default::default() })
            .await
            .unwrap();
        let deployment = format!("{app}-deploy");
        let subscription = kiln
            .ctx
            .store
            .create_subscription(&NewSubscription {
                app_id,
                cluster: "c1".into(),
                namespace: format!("ns-{name}"),
                deployment: deployment.clone(),
                container: "main".into(),
                repository: format!("{name}/{app}"),
                policy: "branch:main".into(),
                rollback_on_failure: true,
                strategy: None,
            })
            .await
            .unwrap();
        let (developer_token_id, developer) = new_token(kiln, &owner, name, "developer").await;
        let (_, viewer) = new_token(kiln, &owner, name, "viewer").await;
        let secrets = vec![
            name.to_string(),
            app.to_string(),
            commit.to_string(),
            format!("{letter}/{app}"),
            deployment,
            format!("ns-{name}"),
            hook_secret,
            git_token,
            owner.clone(),
            developer.clone(),
            viewer.clone(),
        ];
        World {
            name: name.into(),
            id,
            app: app.into(),
            build_id: build.id,
            subscription_id: subscription.id,
            owner,
            developer,
            viewer,
            developer_token_id,
            secrets,
        }
    }

    /// The value of a path parameter of the route table, for this tenant's objects.
    fn param(&self, name: &str) -> Option<String> {
        Some(match name {
            "tenant" => self.name.clone(),
            "app" => self.app.clone(),
            "build_id" => self.build_id.to_string(),
            "subscription_id" => self.subscription_id.to_string(),
            "token_id" => self.developer_token_id.to_string(),
            _ => return None,
        })
    }

    fn tokens(&self) -> [(Role, &str); 3] {
        [(Role::Owner, &self.owner), (Role::Developer, &self.developer), (Role::Viewer, &self.viewer)]
    }
}

/// A token of `role` made by the tenant's owner through the API: (id, secret).
pub async fn new_token(kiln: &TestKiln, owner: &str, tenant: &str, role: &str) -> (i64, String) {
    let (status, body) = kiln
        .request(Method::POST, &format!("/api/v1/tenants/{tenant}/tokens"), Some(owner), Some(json!({ "name": role, "role": role })))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    (body["id"].as_i64().unwrap(), body["token"].as_str().unwrap().to_string())
}

/// The names of a route's path parameters, in order: `{app}` → `app`.
fn params(path: &str) -> Vec<&str> {
    path.split('/').filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect()
}

/// A well-formed body for each route, so that what refuses a request is the tenant (or the
/// role), never a 400 for the body. A route missing here fails the matrix.
fn body_for(method: &Method, path: &str, b: &World) -> Option<Value> {
    match (method.as_str(), path) {
        ("GET", _) => None,
        ("POST", "/api/v1/tenants") => Some(json!({ "name": "team-z" })),
        ("POST", "/api/v1/tenants/{tenant}/tokens") => Some(json!({ "name": "probe", "role": "viewer" })),
        ("DELETE", "/api/v1/tenants/{tenant}/tokens/{token_id}") => None,
        ("PUT", "/api/v1/tenants/{tenant}/settings") => Some(json!({ "build_timeout_secs": 600, "max_concurrent_builds": 50 })),
        ("PUT", "/api/v1/tenants/{tenant}/harbor-webhook-secret") => Some(json!({ "secret": "a-probe-harbor-secret" })),
        ("DELETE", "/api/v1/tenants/{tenant}/harbor-webhook-secret") => None,
        ("PUT", "/api/v1/tenants/{tenant}/notifications") | ("PUT", "/api/v1/apps/{app}/notifications") => Some(json!({
            "targets": [{ "kind": "slack", "url": "https://hooks.slack.example/services/probe", "events": ["failed"] }]
        })),
        ("POST", "/api/v1/apps") => {
            let mut spec = app_spec("probe", "http://127.0.0.1:9/z/probe.git", "z/probe", "127.0.0.1:9/z/probe", "probe-secret");
            spec["tenant"] = json!(b.name);
            Some(spec)
        }
        ("PATCH", "/api/v1/apps/{app}") => Some(json!({ "branch_filter": "main", "git_token": "glpat-probe" })),
        ("DELETE", "/api/v1/apps/{app}") => None,
        ("POST", "/api/v1/apps/{app}/builds") => Some(json!({ "commit": SHA_A })),
        ("POST", "/api/v1/apps/{app}/subscriptions") => Some(json!({
            "cluster": "c1", "namespace": "probe", "deployment": "probe", "container": "main", "policy": "branch:main"
        })),
        ("DELETE", "/api/v1/apps/{app}/subscriptions/{subscription_id}") => None,
        ("PUT", "/api/v1/apps/{app}/subscriptions/{subscription_id}/strategy") => Some(json!({ "strategy": "blue-green" })),
        ("POST", "/api/v1/apps/{app}/subscriptions/{subscription_id}/promote") | ("POST", "/api/v1/apps/{app}/subscriptions/{subscription_id}/abort") => None,
        ("POST", "/api/v1/apps/{app}/rollback") => Some(json!({ "build": b.build_id })),
        ("POST", "/api/v1/builds/{build_id}/cancel") | ("POST", "/api/v1/builds/{build_id}/sync") | ("POST", "/api/v1/builds/{build_id}/retry") => None,
        ("POST", "/api/v1/builds/{build_id}/apm") => Some(json!({ "agent": "elastic" })),
        (m, p) => panic!("the isolation matrix has no case for {m} {p}: add a body in body_for"),
    }
}

/// Every way to aim a route at B: each parameter from B or from A, at least one from B (A's
/// app with B's subscription must not reach B's subscription either). A route without path
/// parameters names B with `?tenant=`.
fn aimed_paths(path: &str, a: &World, b: &World) -> Vec<String> {
    let names = params(path);
    if names.is_empty() {
        return vec![format!("{path}?tenant={}", b.name)];
    }
    let mut out = vec![];
    for mask in 1..(1u32 << names.len()) {
        let mut p = path.to_string();
        for (i, name) in names.iter().enumerate() {
            let world = if mask & (1 << i) != 0 { b } else { a };
            let value = world.param(name).unwrap_or_else(|| panic!("{path}: the matrix cannot fill the parameter {{{name}}}; add it to World::param"));
            p = p.replace(&format!("{{{name}}}"), &value);
        }
        out.push(p);
    }
    out
}

#[tokio::test]
async fn every_route_and_role_of_one_tenant_is_refused_at_another_tenants_objects() {
    let kiln = TestKiln::start(&[]).await;
    let a = World::new(&kiln, "team-a", "api-a", SHA_A).await;
    let b = World::new(&kiln, "team-b", "web-b", SHA_B).await;
    let b_tokens_before = kiln.ctx.store.tokens(b.id).await.unwrap().len();

    let routes = api_routes();
    assert!(routes.len() >= 20, "the route table lost routes: {}", routes.len());
    let mut sent = 0;
    for route in &routes {
        let body = body_for(&route.method, route.path, &b);
        for path in aimed_paths(route.path, &a, &b) {
            for (role, token) in a.tokens() {
                let (status, answer) = kiln.request(route.method.clone(), &path, Some(token), body.clone()).await;
                let what = format!("{role:?} of {} {} {path}", a.name, route.method);
                assert!(status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND, "{what}: {status} {answer}");
                assert!(answer["error"].is_string(), "{what}: the refusal says why: {answer}");
                // The answer may repeat what the request said (its path, its body), nothing else of B.
                let asked = format!("{path} {}", body.as_ref().map(Value::to_string).unwrap_or_default());
                let text = answer.to_string();
                for secret in b.secrets.iter().filter(|s| !asked.contains(s.as_str())) {
                    assert!(!text.contains(secret.as_str()), "{what}: the answer shows B's {secret:?}: {text}");
                }
                // A role below the route's is refused before anything is looked up.
                if role < route.role {
                    assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {answer}");
                }
                sent += 1;
            }
        }
    }
    assert!(sent >= routes.len() * 3, "{sent} requests");

    // Nothing of B changed: its tokens, its subscription, its build; its audit log names no one of A.
    let b_tokens = kiln.ctx.store.tokens(b.id).await.unwrap();
    assert_eq!(b_tokens.len(), b_tokens_before);
    assert!(b_tokens.iter().all(|t| t.revoked_at.is_none()), "{b_tokens:?}");
    let b_app = kiln.ctx.store.app_by_name(b.id, &b.app).await.unwrap().expect("B's app is not deleted");
    assert_eq!((b_app.branch_filter.as_str(), b_app.git_token.as_deref()), ("**", Some("glpat-git-token-of-team-b")), "B's app changed");
    let b_subscriptions = kiln.ctx.store.subscriptions_of_app(b_app.id).await.unwrap();
    assert_eq!(b_subscriptions.len(), 1);
    assert_eq!(b_subscriptions[0].strategy, json!({"kind": "rolling"}), "B's strategy changed");
    let build = kiln.build(b.build_id).await;
    assert_ne!(build.state, builder_api::store::BuildState::Cancelled, "{build:?}");
    let a_token_ids: Vec<i64> = kiln.ctx.store.tokens(a.id).await.unwrap().iter().map(|t| t.id).collect();
    for entry in kiln.ctx.store.audit_log(Some(b.id), 1000).await.unwrap() {
        assert!(entry.token_id.is_none_or(|id| !a_token_ids.contains(&id)), "{entry:?}");
    }
    assert!(kiln.ctx.store.tenant_by_name("team-z").await.unwrap().is_none());
    let b_settings = kiln.ctx.store.tenant(b.id).await.unwrap().unwrap().settings;
    assert_eq!(b_settings, builder_api::store::TenantSettings::default(), "B's settings changed");
    assert_eq!(kiln.ctx.store.harbor_webhook_secret(b.id).await.unwrap(), None, "B's Harbor webhook secret changed");
}

#[tokio::test]
async fn roles_decide_what_a_token_may_do_in_its_own_tenant() {
    let kiln = TestKiln::start(&[]).await;
    let a = World::new(&kiln, "team-a", "api-a", SHA_A).await;
    let trigger = json!({ "commit": SHA_A });
    let builds = format!("/api/v1/apps/{}/builds", a.app);
    let tokens = format!("/api/v1/tenants/{}/tokens", a.name);

    // Each token learns its own tenant and role (what the web page offers depends on it).
    for (role, token) in a.tokens() {
        let (status, me) = kiln.request(Method::GET, "/api/v1/whoami", Some(token), None).await;
        assert_eq!(status, StatusCode::OK, "{me}");
        assert_eq!((me["tenant"].as_str(), me["role"].as_str()), (Some("team-a"), Some(role.as_str())), "{me}");
    }
    let (_, me) = kiln.request(Method::GET, "/api/v1/whoami", Some(ADMIN), None).await;
    assert_eq!((&me["tenant"], me["role"].as_str(), &me["token"]), (&Value::Null, Some("admin"), &Value::Null), "{me}");

    // A viewer reads but does not trigger: 403 that says which role it needs.
    let (status, body) = kiln.request(Method::GET, &format!("/api/v1/builds/{}", a.build_id), Some(&a.viewer), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = kiln.request(Method::POST, &builds, Some(&a.viewer), Some(trigger.clone())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["error"].as_str().unwrap().contains("developer"), "{body}");

    // A developer triggers and cancels, but makes no tokens, apps or rollbacks.
    let (status, body) = kiln.request(Method::POST, &builds, Some(&a.developer), Some(trigger.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let triggered = body["build"]["id"].as_i64().unwrap();
    let (status, body) = kiln.request(Method::POST, &format!("/api/v1/builds/{triggered}/cancel"), Some(&a.developer), None).await;
    assert!(status == StatusCode::OK || status == StatusCode::ACCEPTED, "{body}");
    for (method, path, req) in [
        (Method::POST, tokens.clone(), json!({ "role": "viewer" })),
        (Method::GET, tokens.clone(), Value::Null),
        (Method::POST, "/api/v1/apps".to_string(), app_spec("x", "http://127.0.0.1:9/x.git", "a/x", "127.0.0.1:9/a/x", "secret-x-123")),
        (Method::POST, format!("/api/v1/apps/{}/rollback", a.app), json!({ "build": a.build_id })),
        (Method::GET, "/api/v1/audit".to_string(), Value::Null),
    ] {
        let body = (!req.is_null()).then_some(req);
        let (status, answer) = kiln.request(method.clone(), &path, Some(&a.developer), body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "developer {method} {path}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains("owner"), "{answer}");
    }

    // An owner lists tokens (never a secret or its hash) and mints at most its own role.
    let (status, listed) = kiln.request(Method::GET, &tokens, Some(&a.owner), None).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let roles: Vec<&str> = listed["tokens"].as_array().unwrap().iter().map(|t| t["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["owner", "developer", "viewer"], "{listed}");
    let text = listed.to_string();
    for secret in [&a.owner, &a.developer, &a.viewer] {
        assert!(!text.contains(secret.as_str()) && !text.contains(&builder_api::store::token_sha256(secret)), "{text}");
    }
    let (status, body) = kiln.request(Method::POST, &tokens, Some(&a.owner), Some(json!({ "role": "admin" }))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = kiln.request(Method::POST, &tokens, Some(ADMIN), Some(json!({ "role": "admin" }))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    for bad in [json!({ "expires_in_secs": 0 }), json!({ "expires_at": 1 }), json!({ "expires_in_secs": 60, "expires_at": 4102444800000i64 }), json!({ "role": "root" })] {
        let (status, body) = kiln.request(Method::POST, &tokens, Some(&a.owner), Some(bad.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, body) = kiln.request(Method::POST, &tokens, Some(&a.owner), Some(json!({ "name": "ci", "role": "developer", "expires_in_secs": 3600 }))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let expires = body["expires_at"].as_i64().unwrap();
    let now = builder_api::store::now_ms();
    assert!((now + 3_590_000..=now + 3_600_000).contains(&expires), "{body}");
    let (status, _) = kiln.request(Method::GET, "/api/v1/builds", Some(body["token"].as_str().unwrap()), None).await;
    assert_eq!(status, StatusCode::OK);

    // Revoked: refused from the next request on; revoking again is a conflict.
    let revoke = format!("{tokens}/{}", a.developer_token_id);
    let (status, body) = kiln.request(Method::DELETE, &revoke, Some(&a.owner), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = kiln.request(Method::GET, "/api/v1/builds", Some(&a.developer), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "unknown or revoked token");
    let (status, body) = kiln.request(Method::DELETE, &revoke, Some(&a.owner), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // Expired: a token whose time is past (stored directly: no test waits for a clock).
    let expired = builder_api::store::new_token();
    kiln.ctx.store.add_token(Some(a.id), "old", Role::Viewer, Some(now - 1), &expired).await.unwrap();
    let (status, body) = kiln.request(Method::GET, "/api/v1/builds", Some(&expired), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "token expired");
    let (_, listed) = kiln.request(Method::GET, &tokens, Some(&a.owner), None).await;
    let dev = listed["tokens"].as_array().unwrap().iter().find(|t| t["id"] == a.developer_token_id).unwrap();
    assert!(dev["revoked_at"].is_i64() && dev["last_used_at"].is_i64(), "{dev}");

    // The last usable owner token cannot be revoked (an expired one does not count): 409 with
    // what to do instead. With a second owner token, the first goes.
    kiln.ctx.store.add_token(Some(a.id), "old-owner", Role::Owner, Some(now - 1), &builder_api::store::new_token()).await.unwrap();
    let owners = |tokens: Vec<builder_api::store::ApiToken>| -> Vec<i64> {
        tokens.into_iter().filter(|t| t.role == Role::Owner && t.revoked_at.is_none() && t.expires_at.is_none()).map(|t| t.id).collect()
    };
    let first = owners(kiln.ctx.store.tokens(a.id).await.unwrap());
    assert_eq!(first.len(), 1, "{first:?}");
    let (status, body) = kiln.request(Method::DELETE, &format!("{tokens}/{}", first[0]), Some(&a.owner), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("last owner token") && body["error"].as_str().unwrap().contains("role owner"), "{body}");
    let (status, body) = kiln.request(Method::POST, &tokens, Some(&a.owner), Some(json!({ "name": "second-owner", "role": "owner" }))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = kiln.request(Method::DELETE, &format!("{tokens}/{}", first[0]), Some(&a.owner), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
}

#[tokio::test]
async fn the_audit_log_says_who_changed_what_from_where() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::support::kiln::test_config(dir.path(), &[]);
    config.server.trust_forwarded_for = true;
    let kiln = TestKiln::start_with(dir, config).await;
    let a = World::new(&kiln, "team-a", "api-a", SHA_A).await;
    let b = World::new(&kiln, "team-b", "web-b", SHA_B).await;

    // Through a proxy that says who the client is…
    let req = Request::post(format!("/api/v1/apps/{}/builds", a.app))
        .header("authorization", format!("Bearer {}", a.developer))
        .header("content-type", "application/json")
        .header("x-forwarded-for", "203.0.113.7, 10.0.0.1")
        .body(Body::from(json!({ "commit": SHA_A }).to_string()))
        .unwrap();
    let (status, body) = kiln.send(req).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let triggered = body["build"]["id"].as_i64().unwrap();
    // …and straight over a socket: the peer's address.
    let res = reqwest::Client::new()
        .post(kiln.url(&format!("/api/v1/builds/{triggered}/cancel")))
        .bearer_auth(&a.developer)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    // A refused request changes nothing, so it writes nothing.
    let (status, _) = kiln.request(Method::POST, &format!("/api/v1/builds/{}/cancel", b.build_id), Some(&a.developer), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A build a webhook started is audited too, with the sender's address.
    let push = crate::support::fixtures::GitlabPush::branch("a/api-a", "http://127.0.0.1:9/a/api-a.git", "main", SHA_A);
    let req = Request::post("/hooks/gitlab")
        .header("x-gitlab-event", push.event())
        .header("x-gitlab-token", "hook-secret-of-team-a")
        .header("x-forwarded-for", "198.51.100.4")
        .body(Body::from(push.body().to_string()))
        .unwrap();
    let (status, body) = kiln.send(req).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let pushed = body["builds"][0].as_i64().unwrap();

    let (status, log) = kiln.request(Method::GET, "/api/v1/audit", Some(&a.owner), None).await;
    assert_eq!(status, StatusCode::OK, "{log}");
    let by_webhook = log["entries"].as_array().unwrap().iter().find(|e| e["actor"] == "webhook:gitlab").unwrap_or_else(|| panic!("no webhook entry in {log}"));
    assert_eq!((&by_webhook["action"], &by_webhook["target"], &by_webhook["client_addr"]), (&json!("build.trigger"), &json!(format!("build/{pushed}")), &json!("198.51.100.4")));
    let entries = log["entries"].as_array().unwrap();
    assert!(entries.iter().all(|e| e["tenant"] == "team-a"), "{log}");
    let find = |action: &str| entries.iter().find(|e| e["action"] == action).unwrap_or_else(|| panic!("no {action} in {log}")).clone();
    let trigger = entries.iter().find(|e| e["action"] == "build.trigger" && e["actor"] != "webhook:gitlab").unwrap_or_else(|| panic!("no API trigger in {log}")).clone();
    assert_eq!(trigger["target"], format!("build/{triggered}"));
    assert_eq!(trigger["client_addr"], "203.0.113.7");
    assert!(trigger["actor"].as_str().unwrap().ends_with(":developer"), "{trigger}");
    let cancel = find("build.cancel");
    assert_eq!(cancel["target"], format!("build/{triggered}"));
    assert_eq!(cancel["client_addr"], "127.0.0.1");
    let dev_token = format!("token/{}", a.developer_token_id);
    assert!(entries.iter().any(|e| e["action"] == "token.create" && e["target"] == dev_token.as_str()), "{log}");
    assert_eq!(find("app.create")["target"], "app/api-a");
    assert_eq!(entries.iter().filter(|e| e["action"] == "build.cancel").count(), 1, "{log}");

    // The owner reads only its tenant; the admin reads all, tenant creation included.
    let (status, _) = kiln.request(Method::GET, "/api/v1/audit?tenant=team-b", Some(&a.owner), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for token in [&a.developer, &a.viewer] {
        let (status, _) = kiln.request(Method::GET, "/api/v1/audit", Some(token), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    let (status, all) = kiln.request(Method::GET, "/api/v1/audit?limit=1000", Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    let created: Vec<&Value> = all["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "tenant.create").collect();
    assert_eq!(created.len(), 2, "{all}");
    assert!(created.iter().all(|e| e["actor"] == "admin" && e["client_addr"].is_null()), "{all}");
    let (_, only_b) = kiln.request(Method::GET, "/api/v1/audit?tenant=team-b", Some(ADMIN), None).await;
    assert!(only_b["entries"].as_array().unwrap().iter().all(|e| e["tenant"] == "team-b"), "{only_b}");
}

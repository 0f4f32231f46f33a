//! `kube.provision_namespaces`: an admin creates a tenant and Kiln, bound to exactly
//! `deploy/base/rbac.yaml` and `deploy/provisioning/`, makes its build namespace, the RoleBinding that
//! grants Kiln its writes there and the build ServiceAccount — then builds there. Without the
//! provisioning rights the tenant is not created and the answer names the right Kiln lacks. The
//! fake API server holds RoleBinding creates to the real escalation check (`bind`).

use std::path::Path;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use builder_api::store::BuildState;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, PostParams};
use serde_json::{json, Value};

use crate::kube_builds::{fake_options, job_name, kiln_identity, kube_config, GIT_TOKEN, LIMIT, SECRET};
use crate::support::fake_kube::rbac::Identity;
use crate::support::fake_kube::FakeKube;
use crate::support::fixtures::fixture_app;
use crate::support::git_server::GitServer;
use crate::support::kiln::{TestKiln, ADMIN};
use crate::support::registry::TestRegistry;

fn deploy_file(f: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(f)).unwrap()
}

/// The fake with only `deploy/base/rbac.yaml` applied (no per-namespace RoleBindings: provisioning
/// makes them), plus the given extra manifests.
fn cluster(root: &Path, extra: &[&str]) -> FakeKube {
    let fake = FakeKube::start(fake_options(root, &[]));
    fake.create_from_yaml(&deploy_file("base/rbac.yaml"));
    crate::kube_builds::grant_lease(&fake);
    for text in extra {
        fake.create_from_yaml(text);
    }
    fake
}

/// A Kiln with the kube executor on the fake, as Kiln's ServiceAccount, provisioning on.
async fn kiln(fake: &FakeKube, registry: &TestRegistry) -> TestKiln {
    let dir = tempfile::tempdir().unwrap();
    let mut config = kube_config(dir.path(), registry);
    config.kube.provision_namespaces = true;
    TestKiln::start_with_kube(dir, config, Some(fake.client_as(kiln_identity()))).await
}

async fn create_tenant(kiln: &TestKiln, body: Value) -> (StatusCode, Value) {
    kiln.request(Method::POST, "/api/v1/tenants", Some(ADMIN), Some(body)).await
}

/// The provisioning component without its `bind` rule.
fn provisioning_without_bind() -> String {
    let text = deploy_file("provisioning/rbac.yaml");
    let (role, binding) = text.split_once("\n---").unwrap();
    let mut role: Value = serde_saphyr::from_str(role).unwrap();
    role["rules"].as_array_mut().unwrap().retain(|r| r["verbs"] != json!(["bind"]));
    assert_eq!(role["rules"].as_array().unwrap().len(), 2);
    format!("{}\n---{binding}", serde_json::to_string(&role).unwrap())
}

#[tokio::test]
async fn an_admin_creating_a_tenant_gets_its_namespace_rolebinding_and_service_account_and_its_builds_run_there() {
    crate::support::init();
    let git = GitServer::start_with_token(GIT_TOKEN).await;
    let registry = TestRegistry::start().await;
    let root = tempfile::tempdir().unwrap();
    let fake = cluster(root.path(), &[&deploy_file("provisioning/rbac.yaml")]);
    let kiln = kiln(&fake, &registry).await;
    assert!(fake.get("namespaces", "", "kiln-team").is_none());

    let token = kiln.tenant("team").await;
    // The namespace, labelled as Kiln's, at the PodSecurity level all three templates pass.
    let ns = fake.get("namespaces", "", "kiln-team").expect("the namespace was created");
    let labels = &ns["metadata"]["labels"];
    assert_eq!(labels["app.kubernetes.io/managed-by"], "kiln", "{ns:#}");
    assert_eq!(labels["kiln.dev/tenant"], "team", "{ns:#}");
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "privileged", "{ns:#}");
    // Kiln's writes there, bound to Kiln's own ServiceAccount.
    let rb = fake.get("rolebindings", "kiln-team", "kiln-builds").expect("the RoleBinding");
    assert_eq!(rb["roleRef"], json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kiln-builds"}));
    assert_eq!(rb["subjects"], json!([{"kind": "ServiceAccount", "name": "kiln", "namespace": "kiln"}]));
    // The build pods' ServiceAccount: no token, and nothing binds it.
    let sa = fake.get("serviceaccounts", "kiln-team", "kiln-build").expect("the build ServiceAccount");
    assert_eq!(sa["automountServiceAccountToken"], false);
    for rb in fake.list("rolebindings", None).into_iter().chain(fake.list("clusterrolebindings", None)) {
        assert!(!rb["subjects"].to_string().contains("kiln-build\""), "{rb:#}");
    }
    // Nothing else was made (the NetworkPolicy is the operator's). The Lease aside: on PostgreSQL
    // Kiln holds it in its own namespace and renews it every 2 s.
    let writes: Vec<_> =
        fake.requests().into_iter().filter(|r| r.is_write() && r.resource != "leases").map(|r| (r.verb, r.resource, r.namespace, r.name)).collect();
    assert_eq!(
        writes,
        [
            ("create", "namespaces".to_string(), None, Some("kiln-team".to_string())),
            ("create", "rolebindings".into(), Some("kiln-team".into()), Some("kiln-builds".into())),
            ("create", "serviceaccounts".into(), Some("kiln-team".into()), Some("kiln-build".into())),
        ]
    );

    // A build of the tenant gets its Job created there, through the RoleBinding Kiln made.
    fake.set_kubelet_running(false);
    let (sha, spec) = fixture_app(&git, &registry.host(), "team/hello", "go-hello", (SECRET, GIT_TOKEN), json!({"kind": "go"}));
    kiln.app(&token, spec).await;
    let id = kiln.trigger(&token, "hello", json!({"commit": sha})).await;
    let job = fake.wait_for("jobs", "kiln-team", &job_name(id), Duration::from_secs(30), |j| j.cloned()).await;
    assert_eq!(job["metadata"]["labels"]["kiln.dev/tenant"], "team");
    assert!(fake.get("secrets", "kiln-team", "kiln-git-hello").is_some(), "the git token Secret");
    // Cancelled: its Job is deleted, also through that RoleBinding.
    let (status, _) = kiln.request(Method::POST, &format!("/api/v1/builds/{id}/cancel"), Some(&token), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(kiln.wait_final(id, LIMIT).await.state, BuildState::Cancelled);
    fake.wait_for("jobs", "kiln-team", &job_name(id), Duration::from_secs(30), |j| j.is_none().then_some(())).await;
    assert_eq!(fake.refusals(), vec![], "Kiln was refused something");

    // A second tenant with a namespace of its own, which an operator made already: the 409 is
    // fine, the rest is made.
    fake.create_namespace("builds-shop");
    let (status, body) = create_tenant(&kiln, json!({"name": "shop", "namespace": "builds-shop"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["provisioned"]["existed"], json!(["Namespace builds-shop"]), "{body}");
    assert_eq!(body["provisioned"]["created"], json!(["RoleBinding builds-shop/kiln-builds", "ServiceAccount builds-shop/kiln-build"]), "{body}");
    assert!(fake.get("serviceaccounts", "builds-shop", "kiln-build").is_some());

    // Never Kubernetes' own namespaces, nor Kiln's.
    for ns in ["kube-system", "default", "kiln"] {
        let (status, body) = create_tenant(&kiln, json!({"name": format!("x{}", ns.len()), "namespace": ns})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{ns}: {body}");
        assert!(body["error"].as_str().unwrap().contains("does not provision"), "{body}");
    }
    assert!(fake.get("rolebindings", "kube-system", "kiln-builds").is_none());
}

#[tokio::test]
async fn without_the_provisioning_rights_no_tenant_is_created_and_the_answer_names_the_missing_right() {
    crate::support::init();
    let registry = TestRegistry::start().await;
    let root = tempfile::tempdir().unwrap();
    // deploy/base/rbac.yaml only.
    let fake = cluster(root.path(), &[]);
    let kiln = kiln(&fake, &registry).await;
    let (status, body) = create_tenant(&kiln, json!({"name": "team"})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("creating Namespace kiln-team: the cluster refused: namespaces \"kiln-team\" is forbidden")
            || error.contains("creating Namespace kiln-team: the cluster refused: namespaces is forbidden"),
        "{error}"
    );
    assert!(error.contains("cannot create resource \"namespaces\"") && error.contains("403 Forbidden"), "{error}");
    assert!(error.contains("deploy/provisioning/"), "{error}");
    assert!(kiln.ctx.store.tenant_by_name("team").await.unwrap().is_none(), "a tenant row was left");
    let (_, tenants) = kiln.request(Method::GET, "/api/v1/tenants", Some(ADMIN), None).await;
    assert_eq!(tenants["tenants"], json!([]), "{tenants}");
    assert!(fake.get("namespaces", "", "kiln-team").is_none());

    // With the component but without its `bind` rule: the namespace is made, the RoleBinding is
    // refused by the escalation check, and again no tenant.
    fake.create_from_yaml(&provisioning_without_bind());
    let (status, body) = create_tenant(&kiln, json!({"name": "team"})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("creating RoleBinding kiln-team/kiln-builds: the cluster refused: rolebindings.rbac.authorization.k8s.io \"kiln-builds\" is forbidden: user \"system:serviceaccount:kiln:kiln\"")
            && error.contains("is attempting to grant RBAC permissions not currently held"),
        "{error}"
    );
    assert!(kiln.ctx.store.tenant_by_name("team").await.unwrap().is_none(), "a tenant row was left");
    assert!(fake.get("namespaces", "", "kiln-team").is_some());
    assert!(fake.get("rolebindings", "kiln-team", "kiln-builds").is_none());

    // The operator applies the whole component; creating the tenant again completes the namespace.
    let full = deploy_file("provisioning/rbac.yaml");
    let role: Value = serde_saphyr::from_str(full.split_once("\n---").unwrap().0).unwrap();
    let admin: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(fake.client());
    admin.replace("kiln-provisioner", &PostParams::default(), &serde_json::from_value(role).unwrap()).await.unwrap();
    let (status, body) = create_tenant(&kiln, json!({"name": "team"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["provisioned"]["existed"], json!(["Namespace kiln-team"]), "{body}");
    assert!(fake.get("rolebindings", "kiln-team", "kiln-builds").is_some());
    assert!(fake.get("serviceaccounts", "kiln-team", "kiln-build").is_some());
}

/// The fake's escalation check, on its own: a RoleBinding to a ClusterRole is created only by a
/// client that may `bind` that very role, or that already holds all of its rules in the
/// namespace; with the provisioner's rights, Kiln can bind `kiln-builds` and nothing else.
#[tokio::test]
async fn the_fake_refuses_a_rolebinding_without_bind_on_its_role_as_the_real_apiserver_does() {
    let root = tempfile::tempdir().unwrap();
    let fake = FakeKube::start(fake_options(root.path(), &["kiln-team"]));
    fake.create_from_yaml(&deploy_file("base/rbac.yaml"));
    fake.create_from_yaml(&provisioning_without_bind());
    // A role Kiln must never be able to hand out.
    fake.create_from_yaml("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: admin\nrules:\n  - apiGroups: [\"*\"]\n    resources: [\"*\"]\n    verbs: [\"*\"]\n");
    let binding = |role: &str| -> RoleBinding {
        serde_json::from_value(json!({
            "metadata": {"name": format!("kiln-{role}")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": "kiln", "namespace": "kiln"}]
        }))
        .unwrap()
    };
    let kiln: Api<RoleBinding> = Api::namespaced(fake.client_as(kiln_identity()), "kiln-team");

    // create on rolebindings, but no bind: 403, listing what kiln-builds grants and Kiln lacks.
    let err = kiln.create(&PostParams::default(), &binding("kiln-builds")).await.unwrap_err();
    let kube::Error::Api(status) = err else { panic!("{err}") };
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        status.message,
        "rolebindings.rbac.authorization.k8s.io \"kiln-kiln-builds\" is forbidden: user \"system:serviceaccount:kiln:kiln\" \
         (groups=[\"system:serviceaccounts\" \"system:serviceaccounts:kiln\" \"system:authenticated\"]) is attempting to grant RBAC \
         permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\" \"create\" \"patch\"]}\n\
         {APIGroups:[\"\"], Resources:[\"serviceaccounts\"], Verbs:[\"create\"]}\n\
         {APIGroups:[\"batch\"], Resources:[\"jobs\"], Verbs:[\"create\" \"delete\"]}"
    );
    let refusal = fake.refusals().pop().unwrap();
    assert_eq!((refusal.verb.as_str(), refusal.resource.as_str(), refusal.name.as_deref()), ("bind", "clusterroles", Some("kiln-builds")));

    // bind on kiln-builds by name: allowed; the same rights do not bind admin.
    let role: Value = serde_saphyr::from_str(deploy_file("provisioning/rbac.yaml").split_once("\n---").unwrap().0).unwrap();
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(fake.client());
    roles.replace("kiln-provisioner", &PostParams::default(), &serde_json::from_value(role).unwrap()).await.unwrap();
    kiln.create(&PostParams::default(), &binding("kiln-builds")).await.expect("bind on kiln-builds");
    let err = kiln.create(&PostParams::default(), &binding("admin")).await.unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 403 && s.message.contains("is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"*\"], Resources:[\"*\"], Verbs:[\"*\"]}")), "{err}");
    // Nor a ClusterRoleBinding at all.
    let crb: k8s_openapi::api::rbac::v1::ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "kiln-everywhere"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kiln-builds"},
        "subjects": [{"kind": "ServiceAccount", "name": "kiln", "namespace": "kiln"}]
    }))
    .unwrap();
    let err = Api::all(fake.client_as(kiln_identity())).create(&PostParams::default(), &crb).await.unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 403 && s.message.contains("cannot create resource \"clusterrolebindings\"")), "{err}");

    // Without bind, holding every rule of the role where the binding grants it is enough: a
    // namespace admin (admin bound there) may bind kiln-builds in its namespace, not elsewhere.
    let ops = Identity { user: "ops@example.com".into(), groups: vec!["system:authenticated".into()] };
    fake.create_namespace("other");
    fake.create_from_yaml(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: ops-admin\n  namespace: kiln-team\n\
         roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: admin\nsubjects:\n  - kind: User\n    name: ops@example.com\n",
    );
    let as_ops: Api<RoleBinding> = Api::namespaced(fake.client_as(ops.clone()), "kiln-team");
    let mut b = binding("kiln-builds");
    b.metadata.name = Some("ops-made".into());
    as_ops.create(&PostParams::default(), &b).await.expect("ops holds every rule of kiln-builds in kiln-team");
    let err = Api::<RoleBinding>::namespaced(fake.client_as(ops), "other").create(&PostParams::default(), &b).await.unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 403), "{err}");
}

//! Namespace provisioning (`kube.provision_namespaces`): when an admin creates a tenant, Kiln
//! makes what `deploy/build-namespace/` holds for the tenant's build namespace, in this order:
//!
//! 1. the Namespace, labelled `app.kubernetes.io/managed-by: kiln`, `kiln.dev/tenant`,
//!    `kiln.dev/instance`, and PodSecurity `enforce: privileged` with `warn: restricted` — the
//!    level Kiln's own check (`pod_security`, `submit::check_pod_security`) accepts for all three
//!    templates: the Dockerfile template's image container runs rootless BuildKit with seccomp and
//!    AppArmor `Unconfined` and privilege escalation allowed, which `baseline` (and `restricted`)
//!    refuse, and a tenant's `auto` app may turn out to be a Dockerfile build. No pod of it is
//!    privileged; `warn: restricted` names what each Dockerfile Job does beyond `restricted`;
//! 2. the RoleBinding `kiln-builds` (ClusterRole `kiln-builds`, subject `kube.service_account`):
//!    Kiln's writes in that namespace. Creating it takes `bind` on the ClusterRole `kiln-builds`
//!    (the apiserver's escalation check: Kiln does not yet hold those rights there);
//! 3. the ServiceAccount `kiln-build` the build pods run as, without a token and bound to
//!    nothing. Created under the RoleBinding of step 2 (`kiln-builds` grants `create` on
//!    ServiceAccounts), so Kiln holds no cluster-wide right to create ServiceAccounts.
//!
//! The build NetworkPolicy (`deploy/build-namespace/networkpolicy.yaml`) is not created: its
//! addresses are the operator's, and the right to create NetworkPolicies in build namespaces would
//! let a compromised Kiln open their egress — the operator applies it (`deploy/README.md`).
//!
//! The rights for steps 1 and 2 are `deploy/provisioning/` (ClusterRole `kiln-provisioner`:
//! `create` on namespaces and rolebindings, `bind` on the ClusterRole `kiln-builds` by name).
//! An object that exists already (409) is fine, so provisioning again completes what a refusal
//! interrupted. Nothing is deleted on failure (Kiln has no right to): the caller provisions before
//! it stores the tenant, so a refusal leaves no tenant, at most a namespace to retry into.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client, Resource};

use super::pod_security::{Level, ENFORCE_LABEL};
use super::render::{LABEL_INSTANCE, MANAGED_BY};
use crate::config::KubeConfig;

/// The ClusterRole Kiln binds in each build namespace (`deploy/base/rbac.yaml`).
pub const BUILDS_ROLE: &str = "kiln-builds";
/// The name of that RoleBinding (as `deploy/build-namespace/rolebinding.yaml` names it).
pub const BUILDS_BINDING: &str = "kiln-builds";
/// The ServiceAccount build pods run as (`deploy/build-namespace/serviceaccount.yaml`).
pub const BUILD_SERVICE_ACCOUNT: &str = "kiln-build";
/// The PodSecurity level a provisioned namespace enforces (see the module's comment).
pub const ENFORCED_LEVEL: Level = Level::Privileged;
/// The label that names a namespace's tenant.
pub const LABEL_TENANT: &str = "kiln.dev/tenant";
/// What a refusal of steps 1 and 2 means.
const PROVISIONER_HINT: &str = "kube.provision_namespaces needs the ClusterRole kiln-provisioner of deploy/provisioning/ bound to Kiln's ServiceAccount";
/// What a refusal of step 3 means.
const BUILDS_HINT: &str = "the ClusterRole kiln-builds of deploy/base/rbac.yaml grants create on serviceaccounts in each build namespace";
/// How long a create under a RoleBinding made a moment ago is retried on 403: the apiserver's
/// authorizer reads bindings from a cache that may not have it yet.
const NEW_BINDING_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// A namespace Kiln must not take over (Kubernetes' own, `default`, Kiln's own).
    #[error("Kiln does not provision the namespace {namespace:?}: {why}")]
    NotProvisionable { namespace: String, why: String },
    /// The cluster refused a create: Kiln lacks a right (403), with what grants it.
    #[error("creating {what}: the cluster refused: {message} (403 Forbidden); {hint}")]
    Forbidden { what: String, message: String, hint: &'static str },
    /// Any other answer, or no answer.
    #[error("creating {what}: {message}")]
    Api { what: String, message: String },
    /// `kube.service_account` is not `<namespace>/<name>`.
    #[error("kube.service_account: {0}")]
    Config(#[from] crate::config::InvalidSetting),
}

/// What provisioning did: each object as `Kind namespace/name`.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Provisioned {
    pub namespace: String,
    pub created: Vec<String>,
    /// Were there already (409), left as they are.
    pub existed: Vec<String>,
}

/// Whether Kiln may provision `namespace`: not Kubernetes' own (`kube-*`), not `default`, and not
/// the namespace Kiln itself runs in.
pub fn check_namespace(kube: &KubeConfig, namespace: &str) -> Result<(), ProvisionError> {
    let refuse = |why: &str| Err(ProvisionError::NotProvisionable { namespace: namespace.into(), why: why.into() });
    if namespace.starts_with("kube-") {
        return refuse("the kube- prefix is reserved for Kubernetes' own namespaces");
    }
    if namespace == "default" {
        return refuse("builds run in a namespace of their own, not in default");
    }
    let (own, _) = kube.service_account_ref()?;
    if namespace == own {
        return refuse("it is the namespace Kiln itself runs in (kube.service_account)");
    }
    Ok(())
}

/// Creates the tenant's build namespace, Kiln's RoleBinding in it and the build ServiceAccount
/// (see the module's comment).
pub async fn provision(client: &Client, kube: &KubeConfig, instance: &str, tenant: &str, namespace: &str) -> Result<Provisioned, ProvisionError> {
    check_namespace(kube, namespace)?;
    let (sa_namespace, sa_name) = kube.service_account_ref()?;
    let labels = |extra: &[(&str, &str)]| {
        let mut l: std::collections::BTreeMap<String, String> = [
            (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
            (LABEL_INSTANCE.to_string(), instance.to_string()),
            (LABEL_TENANT.to_string(), tenant.to_string()),
        ]
        .into();
        l.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        l
    };
    let meta = |name: &str, extra: &[(&str, &str)]| ObjectMeta { name: Some(name.into()), labels: Some(labels(extra)), ..Default::default() };
    let mut done = Provisioned { namespace: namespace.into(), ..Default::default() };

    let ns = Namespace {
        metadata: meta(namespace, &[(ENFORCE_LABEL, ENFORCED_LEVEL.as_str()), ("pod-security.kubernetes.io/warn", Level::Restricted.as_str())]),
        ..Default::default()
    };
    create(&Api::all(client.clone()), &ns, format!("Namespace {namespace}"), PROVISIONER_HINT, Duration::ZERO, &mut done).await?;

    let binding = RoleBinding {
        metadata: meta(BUILDS_BINDING, &[]),
        role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: "ClusterRole".into(), name: BUILDS_ROLE.into() },
        subjects: Some(vec![Subject { kind: "ServiceAccount".into(), name: sa_name.into(), namespace: Some(sa_namespace.into()), ..Default::default() }]),
    };
    let what = format!("RoleBinding {namespace}/{BUILDS_BINDING}");
    create(&Api::namespaced(client.clone(), namespace), &binding, what, PROVISIONER_HINT, Duration::ZERO, &mut done).await?;

    let account = ServiceAccount { metadata: meta(BUILD_SERVICE_ACCOUNT, &[]), automount_service_account_token: Some(false), ..Default::default() };
    let what = format!("ServiceAccount {namespace}/{BUILD_SERVICE_ACCOUNT}");
    create(&Api::namespaced(client.clone(), namespace), &account, what, BUILDS_HINT, NEW_BINDING_GRACE, &mut done).await?;
    tracing::info!(tenant, namespace, created = ?done.created, existed = ?done.existed, "provisioned the build namespace");
    Ok(done)
}

/// One create: 409 counts as done; a 403 is retried for `grace` (a binding made a moment ago).
async fn create<K>(api: &Api<K>, obj: &K, what: String, hint: &'static str, grace: Duration, done: &mut Provisioned) -> Result<(), ProvisionError>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let give_up = tokio::time::Instant::now() + grace;
    let mut pause = Duration::from_millis(50);
    loop {
        match api.create(&PostParams::default(), obj).await {
            Ok(_) => {
                done.created.push(what);
                return Ok(());
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                done.existed.push(what);
                return Ok(());
            }
            Err(kube::Error::Api(s)) if s.code == 403 => {
                if tokio::time::Instant::now() + pause <= give_up {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                    continue;
                }
                return Err(ProvisionError::Forbidden { what, message: s.message, hint });
            }
            Err(kube::Error::Api(s)) => return Err(ProvisionError::Api { what, message: format!("{} ({} {})", s.message, s.code, s.reason) }),
            Err(e) => return Err(ProvisionError::Api { what, message: e.to_string() }),
        }
    }
}

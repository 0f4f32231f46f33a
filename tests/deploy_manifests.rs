//! `deploy/` and `build-images/`, checked without a cluster: every YAML document under `deploy/` is
//! parsed into its typed k8s-openapi object, and the two installs — `deploy/` (SQLite, one
//! replica) and `deploy/postgres/` (PostgreSQL, three), both made of `deploy/base/`, built here
//! the way kustomize builds them — must agree with Kiln itself: the
//! Deployment runs `kiln serve` with the config the ConfigMap holds, that config parses with
//! [`Config`] and selects the kube executor, the ClusterRole grants exactly what the kube executor
//! uses, the templates Kiln reads in the cluster are the repository's `job-templates/` byte for
//! byte, every image the templates name is built by a Dockerfile in `build-images/` and tagged
//! with Kiln's version, and the NetworkPolicies let in nothing but Kiln's HTTP port and let out
//! only DNS and the operator's listed hosts on their ports. The per-namespace kustomize bases
//! (`build-namespace/`, `deploy-namespace/`), their example overlays (`examples/`) and the optional
//! `provisioning/` component are checked as kustomize reads them: what they list exists, the build
//! pods' ServiceAccount has no rights and no token, and the only cluster-wide writes anywhere in
//! `deploy/` are the provisioning component's three rules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use builder_api::config::Config;
use builder_api::executor::kube::render::Templates;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;

/// Every image named in `job-templates/*.yaml` (and the Deployment), and the Dockerfile in
/// `build-images/` that builds it. A new image in a template needs a row here and a Dockerfile.
const IMAGE_DOCKERFILES: &[(&str, &str)] = &[
    // clone (all templates), image (go, maven: `kiln step assemble`), and `kiln serve`.
    ("ghcr.io/kiln-dev/kiln-tools:0.1.0", "kiln-tools.Dockerfile"),
    // compile in go.yaml.
    ("ghcr.io/kiln-dev/go-build:0.1.0-go1.27", "go-build.Dockerfile"),
    // compile in maven.yaml (`kiln step exec … -- mvn -B …`).
    ("ghcr.io/kiln-dev/maven-build:0.1.0-maven3.9-jdk17", "maven-build.Dockerfile"),
    // image in dockerfile.yaml (`kiln step buildkit`).
    ("ghcr.io/kiln-dev/buildkit:0.1.0", "buildkit.Dockerfile"),
];

/// Kiln's version (the workspace's): the tag, or the start of the tag, of every image Kiln runs.
const KILN_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The templates Kiln knows (render.rs) — the keys of the `kiln-job-templates` ConfigMap.
const TEMPLATE_FILES: [&str; 3] = ["go.yaml", "maven.yaml", "dockerfile.yaml"];

/// Each ClusterRole of `deploy/rbac.yaml`, as (apiGroup, resource, verb): what
/// builder-api/src/executor/kube and rollout/ use. Exactly this, nothing more. `kiln` is bound
/// cluster-wide and only reads; the writes are in the roles bound per namespace.
const EXPECTED_GRANTS: &[(&str, &[(&str, &str, &[&str])])] = &[
    (
        "kiln",
        &[
            ("batch", "jobs", &["get", "list", "watch"]),
            ("", "pods", &["list", "watch"]),
            ("", "pods/log", &["get"]),
            ("", "events", &["list", "watch"]),
            ("", "namespaces", &["get"]),
        ],
    ),
    (
        "kiln-builds",
        &[
            ("batch", "jobs", &["create", "delete"]),
            ("", "secrets", &["get", "create", "patch"]),
            // The build ServiceAccount, when Kiln provisions the namespace (provision.rs).
            ("", "serviceaccounts", &["create"]),
        ],
    ),
    (
        "kiln-deploys",
        &[
            // create: the blue-green colours and the canary Deployment, made from a subscribed one.
            ("apps", "deployments", &["get", "list", "watch", "patch", "create"]),
            // The app's Service whose selector blue-green switches.
            ("", "services", &["get", "patch"]),
            // A canary with `traffic: istio` weighs the VirtualService's routes.
            ("networking.istio.io", "virtualservices", &["get", "patch"]),
        ],
    ),
];

/// The rules of `deploy/provisioning/`'s ClusterRole `kiln-provisioner`, as (apiGroup, resource,
/// verb, resourceNames): the only writes bound cluster-wide anywhere in `deploy/`, and exactly
/// these — what `[kube] provision_namespaces` (builder-api/src/executor/kube/provision.rs) does.
const PROVISIONER_RULES: &[(&str, &str, &str, &[&str])] = &[
    ("", "namespaces", "create", &[]),
    ("rbac.authorization.k8s.io", "rolebindings", "create", &[]),
    ("rbac.authorization.k8s.io", "clusterroles", "bind", &["kiln-builds"]),
];

/// The Role in Kiln's namespace (`deploy/base/leases.yaml`) and its rules, as (apiGroup, resource,
/// verb, resourceNames): the Lease the replicas hold in turn for the loops only one Kiln runs.
const LEASE_ROLE: &str = "kiln-leases";
const LEASE_RULES: &[(&str, &str, &str, &[&str])] = &[
    ("coordination.k8s.io", "leases", "create", &[]),
    ("coordination.k8s.io", "leases", "get", &["kiln-singletons"]),
    ("coordination.k8s.io", "leases", "update", &["kiln-singletons"]),
];

/// The sample Prometheus alert rules, relative to deploy/: a plain rule file, not applied.
const ALERT_RULES: &str = "prometheus-alerts.yaml";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deploy_dir() -> PathBuf {
    repo().join("deploy")
}

/// One parsed document of a manifest file.
#[derive(Debug, Clone)]
enum Object {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    Role(Role),
    RoleBinding(RoleBinding),
    ConfigMap(ConfigMap),
    Secret(Secret),
    PersistentVolumeClaim(PersistentVolumeClaim),
    Service(Service),
    Deployment(Deployment),
    PodDisruptionBudget(PodDisruptionBudget),
    Job(Job),
    NetworkPolicy(NetworkPolicy),
}

#[derive(Deserialize)]
struct TypeMeta {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
}

/// A `kustomization.yaml` below `deploy/`, with the part of kustomize these manifests use (unknown
/// keys are an error, so a generator or patch added there is noticed here): the two installs
/// (`deploy/` itself on SQLite, `postgres/`), the `base/` both are made of, the per-namespace
/// bases, their example overlays, and the provisioning Component.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    api_version: String,
    kind: String,
    namespace: Option<String>,
    #[serde(default)]
    labels: Vec<serde_json::Value>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    components: Vec<String>,
    #[serde(default)]
    config_map_generator: Vec<Generator>,
    #[serde(default)]
    images: Vec<ImageOverride>,
    #[serde(default)]
    patches: Vec<PartPatch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartPatch {
    target: PatchTarget,
    /// A JSON patch, as YAML.
    patch: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchTarget {
    kind: String,
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Generator {
    name: String,
    files: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ImageOverride {
    name: String,
    new_name: Option<String>,
    new_tag: Option<String>,
    /// What an operator pins at install (deploy/README.md); the repository ships tags.
    #[allow(dead_code)]
    digest: Option<String>,
}

/// The documents of a YAML file, split on `\n---`, without the ones that hold only comments.
fn documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.starts_with("---") {
            docs.push(String::new());
        } else {
            let doc = docs.last_mut().unwrap();
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.into_iter()
        .filter(|d| d.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')))
        .collect()
}

fn typed<T: serde::de::DeserializeOwned>(file: &Path, doc: &str) -> T {
    serde_saphyr::from_str(doc).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

fn parse_object(file: &Path, doc: &str) -> Object {
    let meta: TypeMeta = typed(file, doc);
    match (meta.api_version.as_str(), meta.kind.as_str()) {
        ("v1", "Namespace") => Object::Namespace(typed(file, doc)),
        ("v1", "ServiceAccount") => Object::ServiceAccount(typed(file, doc)),
        ("v1", "ConfigMap") => Object::ConfigMap(typed(file, doc)),
        ("v1", "Secret") => Object::Secret(typed(file, doc)),
        ("v1", "PersistentVolumeClaim") => Object::PersistentVolumeClaim(typed(file, doc)),
        ("v1", "Service") => Object::Service(typed(file, doc)),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => Object::ClusterRole(typed(file, doc)),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => Object::ClusterRoleBinding(typed(file, doc)),
        ("rbac.authorization.k8s.io/v1", "Role") => Object::Role(typed(file, doc)),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => Object::RoleBinding(typed(file, doc)),
        ("apps/v1", "Deployment") => Object::Deployment(typed(file, doc)),
        ("policy/v1", "PodDisruptionBudget") => Object::PodDisruptionBudget(typed(file, doc)),
        ("batch/v1", "Job") => Object::Job(typed(file, doc)),
        ("networking.k8s.io/v1", "NetworkPolicy") => Object::NetworkPolicy(typed(file, doc)),
        (api, kind) => panic!("{}: no typed check for {api} {kind}; add it to deploy_manifests.rs", file.display()),
    }
}

impl Object {
    /// The namespace a namespaced object names (None for a cluster-scoped one).
    fn namespace(&self) -> Option<&Option<String>> {
        Some(match self {
            Object::ServiceAccount(x) => &x.metadata.namespace,
            Object::ConfigMap(x) => &x.metadata.namespace,
            Object::Secret(x) => &x.metadata.namespace,
            Object::PersistentVolumeClaim(x) => &x.metadata.namespace,
            Object::Service(x) => &x.metadata.namespace,
            Object::Deployment(x) => &x.metadata.namespace,
            Object::PodDisruptionBudget(x) => &x.metadata.namespace,
            Object::Job(x) => &x.metadata.namespace,
            Object::NetworkPolicy(x) => &x.metadata.namespace,
            Object::Role(x) => &x.metadata.namespace,
            Object::RoleBinding(x) => &x.metadata.namespace,
            Object::Namespace(_) | Object::ClusterRole(_) | Object::ClusterRoleBinding(_) => return None,
        })
    }
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// `rel` (a path a kustomization names) from the directory `dir`, both relative to deploy/,
/// without `.` and `..` (`""` is deploy/ itself).
fn join(dir: &str, rel: &str) -> String {
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    for p in rel.split('/') {
        match p {
            "" | "." => {}
            ".." => assert!(parts.pop().is_some(), "{dir}: {rel} leaves deploy/"),
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// Applies a JSON patch (RFC 6902: add, replace, remove, test) the way kustomize's `patches:` does.
fn json_patch(doc: &mut serde_json::Value, ops: &[serde_json::Value]) {
    for op in ops {
        let path = op["path"].as_str().expect("a path");
        let (parent, last) = path.rsplit_once('/').expect("a path below the root");
        let last = last.replace("~1", "/").replace("~0", "~");
        let value = op["value"].clone();
        match op["op"].as_str().expect("an op") {
            "test" => assert_eq!(doc.pointer(path), Some(&value), "test {path}"),
            "replace" => *doc.pointer_mut(path).unwrap_or_else(|| panic!("replace: nothing at {path}")) = value,
            "add" => match doc.pointer_mut(parent).unwrap_or_else(|| panic!("add: nothing at {parent}")) {
                serde_json::Value::Array(a) if last == "-" => a.push(value),
                serde_json::Value::Array(a) => a.insert(last.parse().expect("an index"), value),
                serde_json::Value::Object(m) => drop(m.insert(last, value)),
                other => panic!("add {path}: into {other}"),
            },
            "remove" => match doc.pointer_mut(parent).unwrap_or_else(|| panic!("remove: nothing at {parent}")) {
                serde_json::Value::Array(a) => drop(a.remove(last.parse().expect("an index"))),
                serde_json::Value::Object(m) => assert!(m.remove(&last).is_some(), "remove: nothing at {path}"),
                other => panic!("remove {path}: from {other}"),
            },
            other => panic!("{path}: op {other} is not used here"),
        }
    }
}

/// Everything under `deploy/`: every document of every manifest (by file, relative to deploy/)
/// and every kustomization.
struct Install {
    objects: Vec<(String, Object)>,
    /// The kustomization.yaml files, by their directory relative to deploy/ (`""`: deploy/).
    kustomizations: BTreeMap<String, Kustomization>,
}

/// What `kubectl apply -k deploy/<dir>` applies, built the way kustomize builds it for what these
/// manifests use: the documents of the files its resources name (a directory by its own
/// kustomization, recursively), the ConfigMaps its generators make (key = file name, value =
/// bytes), its JSON patches applied to their targets.
struct Build {
    /// The kustomization's directory, relative to deploy/.
    dir: String,
    /// The manifest files applied, relative to deploy/.
    files: Vec<String>,
    objects: Vec<Object>,
    generated: BTreeMap<String, ConfigMap>,
    images: Vec<ImageOverride>,
}

impl Install {
    fn load() -> Install {
        let dir = deploy_dir();
        let mut files = Vec::new();
        yaml_files(&dir, &mut files);
        let mut objects = Vec::new();
        let mut kustomizations = BTreeMap::new();
        for file in files {
            let rel = file.strip_prefix(&dir).unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&file).unwrap();
            // Prometheus' rule file is not a Kubernetes object (checked below).
            if rel == ALERT_RULES {
                continue;
            }
            // Nor are kustomize's own files.
            if let Some(part_dir) = rel.strip_suffix("kustomization.yaml").filter(|d| d.is_empty() || d.ends_with('/')) {
                kustomizations.insert(part_dir.trim_end_matches('/').to_string(), typed::<Kustomization>(&file, &text));
                continue;
            }
            for doc in documents(&text) {
                objects.push((rel.clone(), parse_object(&file, &doc)));
            }
        }
        assert!(kustomizations.contains_key(""), "deploy/kustomization.yaml");
        Install { objects, kustomizations }
    }

    /// `kubectl apply -k deploy/`: one Kiln on SQLite.
    fn sqlite(&self) -> Build {
        self.build("")
    }

    /// `kubectl apply -k deploy/postgres/`: three Kilns on PostgreSQL.
    fn postgres(&self) -> Build {
        self.build("postgres")
    }

    fn build(&self, dir: &str) -> Build {
        let k = self.kustomizations.get(dir).unwrap_or_else(|| panic!("no deploy/{dir}/kustomization.yaml"));
        assert!(k.components.is_empty(), "{dir}: components are not built here");
        let mut b = Build { dir: dir.to_string(), files: vec![], objects: vec![], generated: BTreeMap::new(), images: k.images.clone() };
        for r in &k.resources {
            let path = join(dir, r);
            if self.kustomizations.contains_key(&path) {
                let base = self.build(&path);
                b.files.extend(base.files);
                b.objects.extend(base.objects);
                for (name, cm) in base.generated {
                    assert!(b.generated.insert(name.clone(), cm).is_none(), "{dir}: generator {name} twice");
                }
                b.images.extend(base.images);
                continue;
            }
            let mine: Vec<Object> = self.objects.iter().filter(|(f, _)| *f == path).map(|(_, o)| o.clone()).collect();
            assert!(!mine.is_empty(), "{dir}/kustomization.yaml lists {r}: no manifest deploy/{path}");
            b.files.push(path);
            b.objects.extend(mine);
        }
        for g in &k.config_map_generator {
            let mut data = BTreeMap::new();
            for f in &g.files {
                let path = deploy_dir().join(join(dir, f));
                let key = path.file_name().unwrap().to_string_lossy().into_owned();
                let value = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert!(data.insert(key.clone(), value).is_none(), "generator {}: key {key} twice", g.name);
            }
            let cm = ConfigMap {
                metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    name: Some(g.name.clone()),
                    namespace: k.namespace.clone(),
                    ..Default::default()
                },
                data: Some(data),
                ..Default::default()
            };
            assert!(b.generated.insert(g.name.clone(), cm).is_none(), "{dir}: generator {} twice", g.name);
        }
        for p in &k.patches {
            assert_eq!(p.target.kind, "Deployment", "{dir}: only Deployments are patched here");
            let ops: Vec<serde_json::Value> = serde_saphyr::from_str(&p.patch).unwrap_or_else(|e| panic!("{dir}: a patch: {e}"));
            let mut patched = 0;
            for o in &mut b.objects {
                let Object::Deployment(d) = o else { continue };
                if d.metadata.name.as_deref() != Some(p.target.name.as_str()) {
                    continue;
                }
                let mut value = serde_json::to_value(&*d).unwrap();
                json_patch(&mut value, &ops);
                *d = serde_json::from_value(value).unwrap_or_else(|e| panic!("{dir}: the patched Deployment: {e}"));
                patched += 1;
            }
            assert_eq!(patched, 1, "{dir}: the patch's target {:?}", p.target);
        }
        b
    }
}

impl Build {
    fn applied(&self) -> impl Iterator<Item = &Object> {
        self.objects.iter()
    }

    fn deployment(&self) -> &Deployment {
        let all: Vec<&Deployment> =
            self.applied().filter_map(|o| if let Object::Deployment(d) = o { Some(d) } else { None }).collect();
        assert_eq!(all.len(), 1, "{}: one Deployment", self.dir);
        all[0]
    }

    fn config_map(&self, name: &str) -> &ConfigMap {
        let applied = self.applied().find_map(|o| match o {
            Object::ConfigMap(c) if c.metadata.name.as_deref() == Some(name) => Some(c),
            _ => None,
        });
        applied.or_else(|| self.generated.get(name)).unwrap_or_else(|| panic!("no ConfigMap {name} in deploy/{}", self.dir))
    }

    /// kiln.toml from its ConfigMap, loaded the way `kiln serve --config` loads it.
    fn config(&self, configmap: &str, key: &str) -> Config {
        let text = self.config_map(configmap).data.as_ref().and_then(|d| d.get(key)).expect("kiln.toml key").clone();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(key);
        std::fs::write(&path, text).unwrap();
        Config::load(Some(&path)).unwrap_or_else(|e| panic!("deploy/{}: ConfigMap {configmap} key {key}: {e}", self.dir))
    }
}

fn kiln_container(d: &Deployment) -> &Container {
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.containers.len(), 1, "one container");
    &pod.containers[0]
}

fn argv(c: &Container) -> Vec<String> {
    c.command.iter().flatten().chain(c.args.iter().flatten()).cloned().collect()
}

/// Which volume (and its source) is mounted at `path`.
fn volume_at<'a>(d: &'a Deployment, path: &str) -> &'a k8s_openapi::api::core::v1::Volume {
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let mount = kiln_container(d)
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == path)
        .unwrap_or_else(|| panic!("nothing mounted at {path}"));
    pod.volumes.iter().flatten().find(|v| v.name == mount.name).unwrap_or_else(|| panic!("no volume {}", mount.name))
}

/// The two installs: (directory relative to deploy/, what it is).
const INSTALLS: [(&str, &str); 2] = [("", "SQLite, one replica"), ("postgres", "PostgreSQL, three replicas")];

#[test]
fn every_document_under_deploy_is_a_typed_object_and_the_kustomizations_list_them() {
    let install = Install::load();
    // Each kustomization of the installs lists every manifest of its own directory (job-templates/
    // and the directories below are not its resources); both installs are made of base/.
    for dir in ["", "base", "postgres"] {
        let k = &install.kustomizations[dir];
        assert_eq!((k.api_version.as_str(), k.kind.as_str()), ("kustomize.config.k8s.io/v1beta1", "Kustomization"), "deploy/{dir}");
        assert_eq!(k.namespace.as_deref(), Some("kiln"), "deploy/{dir}");
        let here: BTreeSet<String> =
            install.objects.iter().map(|(f, _)| f.clone()).filter(|f| Path::new(f).parent() == Some(Path::new(dir))).collect();
        let listed: BTreeSet<String> = k.resources.iter().map(|r| join(dir, r)).filter(|r| r.ends_with(".yaml")).collect();
        assert_eq!(here, listed, "deploy/{dir}/kustomization.yaml resources vs the manifests beside it");
    }
    for (dir, _) in INSTALLS {
        let k = &install.kustomizations[dir];
        assert!(k.resources.iter().any(|r| join(dir, r) == "base"), "deploy/{dir}: made of base/");
        assert!(!k.labels.is_empty(), "deploy/{dir}: labels");
    }
    for (file, o) in &install.objects {
        if let Object::Secret(s) = o {
            // Real secrets never live in the repository; examples/ holds placeholders only.
            assert!(file.starts_with("examples/"), "{file}: Secret {:?} outside examples/", s.metadata.name);
        }
    }
    for (dir, _) in INSTALLS {
        let build = install.build(dir);
        // The namespace exists and holds everything namespaced.
        assert!(build.applied().any(|o| matches!(o, Object::Namespace(n) if n.metadata.name.as_deref() == Some("kiln"))));
        for o in build.applied() {
            if let Some(ns) = o.namespace() {
                assert_eq!(ns.as_deref(), Some("kiln"), "deploy/{dir}: {o:?}");
            }
        }
        // The install creates no Secrets (kiln-admin and the others are made by hand) and no Jobs.
        assert!(build.applied().all(|o| !matches!(o, Object::Secret(_) | Object::Job(_))), "deploy/{dir}");
        // Nothing of the optional or per-namespace parts.
        for f in &build.files {
            assert!(f.starts_with("base/") || Path::new(f).parent() == Some(Path::new(dir)), "deploy/{dir} applies {f}");
        }
    }
}

/// The env vars of the Kiln container that come from a Secret, as (var, Secret, key).
fn env_from_secrets(c: &Container) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for e in c.env.iter().flatten() {
        let Some(from) = &e.value_from else { continue };
        let secret = from.secret_key_ref.as_ref().unwrap_or_else(|| panic!("{}: from something other than a Secret", e.name));
        assert_ne!(secret.optional, Some(true), "{}: the Secret is required", e.name);
        out.insert((e.name.clone(), secret.name.clone(), secret.key.clone()));
    }
    out
}

/// What both installs' Deployments are: `kiln serve` with the config the ConfigMap holds, the
/// tools image, probes on the HTTP port, hardened, Kiln's ServiceAccount, the admin token and the
/// key of the secrets at rest from their Secrets (every replica the same), the ConfigMaps mounted
/// read-only.
fn assert_runs_kiln_serve_hardened(build: &Build) {
    let d = build.deployment();
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(d.metadata.namespace.as_deref(), Some("kiln"));

    let c = kiln_container(d);
    let argv = argv(c);
    assert!(argv.len() >= 2 && argv[0].rsplit('/').next() == Some("kiln") && argv[1] == "serve", "runs kiln serve: {argv:?}");
    let config_path = argv.windows(2).find(|w| w[0] == "--config" || w[0] == "-c").map(|w| w[1].clone()).expect("--config");
    assert_eq!(config_path, "/etc/kiln/kiln.toml");

    // The image is the tools image, built by build-images/.
    let image = c.image.as_deref().unwrap();
    assert_eq!(image, format!("ghcr.io/kiln-dev/kiln-tools:{KILN_VERSION}"));
    assert!(IMAGE_DOCKERFILES.iter().any(|(i, _)| *i == image));
    let repo_name = image.rsplit_once(':').unwrap().0;
    assert!(build.images.iter().any(|i| i.name == repo_name && i.new_name.is_none() && i.new_tag.as_deref() == Some(KILN_VERSION)));

    // Probes on the named port that the config listens on.
    let http = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        let get = p.as_ref().and_then(|p| p.http_get.as_ref()).expect("an httpGet probe");
        (get.path.clone().unwrap_or_default(), get.port.clone())
    };
    let port = IntOrString::String("http".into());
    assert_eq!(http(&c.readiness_probe), ("/readyz".to_string(), port.clone()));
    assert_eq!(http(&c.liveness_probe), ("/healthz".to_string(), port.clone()));
    let container_port = c.ports.iter().flatten().find(|p| p.name.as_deref() == Some("http")).expect("port http");
    assert_eq!(container_port.container_port, 8080);

    // Non-root, read-only, nothing extra.
    let pod = spec.template.spec.as_ref().unwrap();
    let pod_sc = pod.security_context.as_ref().unwrap();
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root.or(pod_sc.run_as_non_root), Some(true));
    assert!(sc.run_as_user.or(pod_sc.run_as_user).is_some_and(|u| u != 0));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(sc.capabilities.as_ref().and_then(|c| c.drop.clone()), Some(vec!["ALL".to_string()]));
    assert!(sc.capabilities.as_ref().unwrap().add.is_none());
    let seccomp = sc.seccomp_profile.as_ref().or(pod_sc.seccomp_profile.as_ref()).map(|s| s.type_.as_str());
    assert_eq!(seccomp, Some("RuntimeDefault"));
    let resources = c.resources.as_ref().expect("resources");
    assert!(resources.requests.as_ref().is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory")));
    assert!(resources.limits.as_ref().is_some_and(|r| r.contains_key("memory")));

    // Its own ServiceAccount, with the token mounted (Kiln is an API client).
    assert_eq!(pod.service_account_name.as_deref(), Some("kiln"));
    assert_eq!(pod.automount_service_account_token, Some(true));
    assert!(build.applied().any(|o| matches!(o, Object::ServiceAccount(sa)
        if sa.metadata.name.as_deref() == Some("kiln") && sa.metadata.namespace.as_deref() == Some("kiln"))));

    // The admin token from the Secret kiln-admin, through the env var config.rs reads, and the key
    // of the secrets at rest from its own Secret kiln-secret-key, never beside the database: every
    // replica reads the same two.
    let secrets = env_from_secrets(c);
    for (var, secret, key) in [("KILN_ADMIN_TOKEN", "kiln-admin", "token"), ("KILN_SECRET_KEY", "kiln-secret-key", "key")] {
        assert!(secrets.contains(&(var.into(), secret.into(), key.into())), "{var} from {secret}/{key}: {secrets:?}");
    }
    let mut probe = Config::default();
    probe.apply_env(|n| (n == "KILN_ADMIN_TOKEN").then(|| "t".to_string())).unwrap();
    assert_eq!(probe.server.admin_token.as_deref(), Some("t"), "config.rs reads KILN_ADMIN_TOKEN");

    // The ConfigMaps, read-only, and /tmp.
    assert_eq!(volume_at(d, "/etc/kiln").config_map.as_ref().map(|c| c.name.as_str()), Some("kiln"));
    assert_eq!(
        volume_at(d, "/etc/kiln/job-templates").config_map.as_ref().map(|c| c.name.as_str()),
        Some("kiln-job-templates")
    );
    assert!(volume_at(d, "/tmp").empty_dir.is_some());
    for m in c.volume_mounts.iter().flatten().filter(|m| m.mount_path.starts_with("/etc/kiln")) {
        assert_eq!(m.read_only, Some(true), "{} read-only", m.mount_path);
    }
}

#[test]
fn the_deployment_runs_kiln_serve_as_a_hardened_single_replica() {
    let install = Install::load();
    let build = install.sqlite();
    assert_runs_kiln_serve_hardened(&build);
    let d = build.deployment();
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(1), "SQLite: one replica");
    assert_eq!(spec.strategy.as_ref().and_then(|s| s.type_.as_deref()), Some("Recreate"));
    // No other secret material in the pod spec.
    let vars: BTreeSet<String> = env_from_secrets(kiln_container(d)).into_iter().map(|(v, _, _)| v).collect();
    assert_eq!(vars, ["KILN_ADMIN_TOKEN", "KILN_SECRET_KEY"].map(String::from).into(), "env from a source");

    // The data PVC.
    let data = volume_at(d, "/var/lib/kiln");
    let claim = data.persistent_volume_claim.as_ref().expect("/var/lib/kiln is a PVC").claim_name.clone();
    assert_eq!(claim, "kiln-data");
    assert!(build.applied().any(|o| matches!(o, Object::PersistentVolumeClaim(p) if p.metadata.name.as_deref() == Some("kiln-data"))));
    // The SQLite install is base/ as it stands: nothing patches its Deployment.
    assert!(install.kustomizations[""].patches.is_empty() && install.kustomizations["base"].patches.is_empty());
}

/// `server.drain_secs` of postgres/kiln.toml (Kiln's default): from SIGTERM on, /readyz answers
/// 503 this long while Kiln still serves; then it stops accepting, finishes its answers and hands
/// its build claims over.
const DRAIN_SECS: i32 = 5;
/// `executor.claim_lease_secs` of postgres/kiln.toml (Kiln's default).
const CLAIM_LEASE_SECS: u64 = 10;

/// Bytes of a Kubernetes quantity of the kinds the manifests use (`2Gi`, `256Mi`).
fn quantity_bytes(q: &str) -> u64 {
    let (n, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let scale = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        other => panic!("quantity {q}: unit {other}"),
    };
    n.parse::<u64>().unwrap() * scale
}

/// The PostgreSQL Deployment without what postgres/ patches, to compare with the SQLite one.
fn without_the_postgres_patch(d: &Deployment) -> serde_json::Value {
    let mut v = serde_json::to_value(d).unwrap();
    for path in [
        "/spec/replicas",
        "/spec/strategy",
        "/spec/template/spec/terminationGracePeriodSeconds",
        "/spec/template/spec/affinity",
        "/spec/template/spec/containers/0/readinessProbe",
        "/spec/template/spec/containers/0/resources/limits/ephemeral-storage",
    ] {
        let (parent, key) = path.rsplit_once('/').unwrap();
        v.pointer_mut(parent).and_then(|p| p.as_object_mut()).map(|m| m.remove(key));
    }
    let pod = &mut v["spec"]["template"]["spec"];
    pod["containers"][0]["env"].as_array_mut().unwrap().retain(|e| e["name"] != "KILN_DATABASE_URL");
    for volume in pod["volumes"].as_array_mut().unwrap() {
        if volume["name"] == "data" {
            *volume = serde_json::json!({"name": "data"});
        }
    }
    v
}

/// `deploy/postgres/`: three replicas on one database, of which any one may be stopped, drained
/// or lost while the others answer. A rolling update starts a new pod and waits until it is ready
/// before it stops an old one; a stopping pod leaves the Service (readiness) before Kiln stops
/// accepting and is given the time to finish; the budget lets a drain evict one at a time; the
/// replicas prefer separate nodes. The database URL comes from a Secret, and there is no PVC.
/// Apart from that the Deployment is the SQLite install's, which stays one replica, Recreate.
#[test]
fn the_postgres_install_runs_three_replicas_that_roll_one_at_a_time_and_drain_before_they_stop() {
    let install = Install::load();
    let build = install.postgres();
    assert_runs_kiln_serve_hardened(&build);
    let d = build.deployment();
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    let strategy = spec.strategy.as_ref().expect("a strategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)), "a new replica is ready before an old one stops");
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(1)));
    let pod = spec.template.spec.as_ref().unwrap();
    let pod_labels = spec.template.metadata.as_ref().unwrap().labels.clone().unwrap();
    let selects_kiln = |what: &str, labels: Option<&BTreeMap<String, String>>| {
        let labels = labels.filter(|l| !l.is_empty()).unwrap_or_else(|| panic!("{what}: matchLabels"));
        for (k, v) in labels {
            assert_eq!(pod_labels.get(k), Some(v), "{what}: {k}={v} matches the Kiln pod");
        }
    };

    // The database from the Secret kiln-database (key url), through the env var config.rs reads;
    // no other secret material than the admin token and the key.
    let c = kiln_container(d);
    let vars = env_from_secrets(c);
    assert!(vars.contains(&("KILN_DATABASE_URL".into(), "kiln-database".into(), "url".into())), "{vars:?}");
    assert_eq!(vars.len(), 3, "env from a source: {vars:?}");
    let mut config = build.config("kiln", "kiln.toml");
    let url = "postgres://kiln:pw@db.example:5432/kiln";
    config.apply_env(|n| (n == "KILN_DATABASE_URL").then(|| url.to_string())).unwrap();
    assert_eq!(config.store.url.as_deref(), Some(url), "config.rs reads KILN_DATABASE_URL");

    // No PVC: /var/lib/kiln is each pod's scratch space, within the pod's ephemeral storage.
    assert!(pod.volumes.iter().flatten().all(|v| v.persistent_volume_claim.is_none()), "a PVC volume");
    assert!(!build.applied().any(|o| matches!(o, Object::PersistentVolumeClaim(_))), "a PVC");
    assert!(!build.files.contains(&"pvc.yaml".to_string()));
    assert!(volume_at(d, "/var/lib/kiln").empty_dir.is_some(), "/var/lib/kiln is an emptyDir");
    let scratch: u64 = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.empty_dir.as_ref())
        .map(|e| quantity_bytes(&e.size_limit.as_ref().expect("an emptyDir with a sizeLimit").0))
        .sum();
    let limit = c.resources.as_ref().and_then(|r| r.limits.as_ref()).and_then(|l| l.get("ephemeral-storage")).expect("an ephemeral-storage limit");
    assert!(quantity_bytes(&limit.0) > scratch, "the ephemeral-storage limit {} holds the emptyDirs ({scratch} bytes) and the logs", limit.0);

    // Out of the Service before Kiln stops accepting: the first 503 of /readyz counts, and it
    // comes within the drain; then time to finish answering and hand the builds over.
    let readiness = c.readiness_probe.as_ref().unwrap();
    let (period, failures, timeout) =
        (readiness.period_seconds.unwrap_or(10), readiness.failure_threshold.unwrap_or(3), readiness.timeout_seconds.unwrap_or(1));
    assert!(period <= 2, "readiness every {period} s");
    assert_eq!(failures, 1, "the first failed readiness probe takes the pod out");
    assert!(period * failures + timeout < DRAIN_SECS, "unready within {period}×{failures}+{timeout} s, inside drain_secs {DRAIN_SECS}");
    let grace = pod.termination_grace_period_seconds.expect("terminationGracePeriodSeconds");
    assert!(grace >= i64::from(DRAIN_SECS) + 30, "terminationGracePeriodSeconds {grace}: drain_secs {DRAIN_SECS} + 30 at least");

    // The two settings of several replicas, as Kiln reads them from kiln.toml.
    let config = build.config("kiln", "kiln.toml");
    assert_eq!(config.server.drain_secs, f64::from(DRAIN_SECS), "[server] drain_secs");
    assert_eq!(config.executor.claim_lease_secs, CLAIM_LEASE_SECS, "[executor] claim_lease_secs");

    // A drain or an upgrade of the cluster evicts one replica at a time, never the last ones.
    let budgets: Vec<&PodDisruptionBudget> =
        build.applied().filter_map(|o| if let Object::PodDisruptionBudget(p) = o { Some(p) } else { None }).collect();
    assert_eq!(budgets.len(), 1, "a PodDisruptionBudget");
    let budget = budgets[0].spec.as_ref().unwrap();
    let selector = budget.selector.as_ref().expect("a selector");
    assert!(selector.match_expressions.is_none());
    selects_kiln("the PodDisruptionBudget", selector.match_labels.as_ref());
    let evictable = match (&budget.max_unavailable, &budget.min_available) {
        (Some(IntOrString::Int(n)), None) => *n,
        (None, Some(IntOrString::Int(n))) => spec.replicas.unwrap() - n,
        other => panic!("maxUnavailable or minAvailable, as a number: {other:?}"),
    };
    assert_eq!(evictable, 1, "one replica evicted at a time");

    // The replicas prefer separate nodes (preferred: on fewer nodes they still run).
    let anti = pod.affinity.as_ref().and_then(|a| a.pod_anti_affinity.as_ref()).expect("podAntiAffinity");
    assert!(anti.required_during_scheduling_ignored_during_execution.is_none(), "preferred, not required");
    let terms = anti.preferred_during_scheduling_ignored_during_execution.as_ref().expect("preferred terms");
    assert_eq!(terms.len(), 1);
    assert_eq!(terms[0].pod_affinity_term.topology_key, "kubernetes.io/hostname");
    selects_kiln("the anti-affinity", terms[0].pod_affinity_term.label_selector.as_ref().and_then(|s| s.match_labels.as_ref()));

    // Everything else is the SQLite install's Deployment, which stays one replica, Recreate.
    let sqlite = install.sqlite();
    let base = sqlite.deployment();
    assert_eq!(base.spec.as_ref().unwrap().replicas, Some(1));
    assert_eq!(base.spec.as_ref().unwrap().strategy.as_ref().and_then(|s| s.type_.as_deref()), Some("Recreate"));
    assert_eq!(without_the_postgres_patch(d), without_the_postgres_patch(base), "postgres/ changes only what it is for");

    let readme = std::fs::read_to_string(deploy_dir().join("README.md")).unwrap();
    for what in ["Choosing SQLite or PostgreSQL", "apply -k deploy/postgres/", "kiln-database", "PostgreSQL 13"] {
        assert!(readme.contains(what), "deploy/README.md explains {what}");
    }
}

/// Prometheus finds the pod by the `prometheus.io/*` annotations of its template (no
/// ServiceMonitor): on the container's HTTP port, at the path the router serves the metrics on.
#[test]
fn the_pod_template_asks_prometheus_to_scrape_its_metrics() {
    let install = Install::load();
    for (dir, _) in INSTALLS {
        assert_asks_prometheus_to_scrape(install.build(dir).deployment());
    }
}

fn assert_asks_prometheus_to_scrape(d: &Deployment) {
    let template = &d.spec.as_ref().unwrap().template;
    let annotations = template.metadata.as_ref().and_then(|m| m.annotations.clone()).unwrap_or_default();
    let get = |k: &str| annotations.get(k).map(String::as_str);
    assert_eq!(get("prometheus.io/scrape"), Some("true"), "{annotations:?}");
    assert_eq!(get("prometheus.io/path"), Some("/metrics"), "{annotations:?}");
    let port = kiln_container(d).ports.iter().flatten().find(|p| p.name.as_deref() == Some("http")).expect("port http").container_port;
    assert_eq!(get("prometheus.io/port"), Some(port.to_string().as_str()), "{annotations:?}");
    let router = std::fs::read_to_string(repo().join("builder-api/src/router.rs")).unwrap();
    assert!(router.contains(".route(\"/metrics\", get(health::metrics))"), "the router serves /metrics");
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    rules: Vec<AlertRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertRule {
    alert: String,
    expr: String,
    #[serde(rename = "for")]
    for_: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

/// The series names a family of `kind` (as `# TYPE` names it) has in Prometheus.
fn series_names(family: &str, kind: &str) -> Vec<String> {
    match kind {
        "counter" => vec![format!("{family}_total")],
        "histogram" => ["_bucket", "_sum", "_count"].iter().map(|s| format!("{family}{s}")).collect(),
        _ => vec![family.to_string()],
    }
}

/// deploy/prometheus-alerts.yaml: a plain Prometheus rule file whose every `kiln_…` name is a
/// series /metrics serves (a counter with `_total`, a histogram with `_bucket`, `_sum` or
/// `_count`, a gauge bare), so no alert can watch a metric that does not exist or was renamed.
#[test]
fn every_metric_the_alert_rules_use_is_one_kiln_serves() {
    let text = std::fs::read_to_string(deploy_dir().join(ALERT_RULES)).unwrap();
    let rules: RuleFile = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{ALERT_RULES}: {e}"));
    let served: BTreeSet<String> =
        builder_api::metrics::Metrics::new().family_names().iter().flat_map(|(name, kind)| series_names(name, kind)).collect();
    assert!(served.contains("kiln_build_queue_wait_seconds_bucket") && served.contains("kiln_webhook_deliveries_total"), "{served:?}");
    let mut used = BTreeSet::new();
    let mut alerts = BTreeSet::new();
    for group in &rules.groups {
        assert!(!group.name.is_empty() && !group.rules.is_empty());
        for rule in &group.rules {
            assert!(alerts.insert(rule.alert.clone()), "alert {} twice", rule.alert);
            assert!(["warning", "critical"].contains(&rule.labels.get("severity").map(String::as_str).unwrap_or_default()), "{}: severity", rule.alert);
            assert!(rule.annotations.contains_key("summary") && rule.annotations.contains_key("description"), "{}: summary and description", rule.alert);
            if let Some(f) = &rule.for_ {
                assert!(f.strip_suffix('m').is_some_and(|n| n.parse::<u32>().is_ok()), "{}: for: {f}", rule.alert);
            }
            let names: Vec<&str> = rule
                .expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("kiln_"))
                .collect();
            assert!(!names.is_empty(), "{}: uses no kiln_ metric", rule.alert);
            for name in names {
                assert!(served.contains(name), "alert {} uses {name}, which /metrics does not serve; it serves {served:?}", rule.alert);
                used.insert(name.to_string());
            }
        }
    }
    // Operators find the file from the README.
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(readme.contains("deploy/prometheus-alerts.yaml"), "README.md points at the alert rules");
    assert!(used.len() >= 8, "{used:?}");
}

#[test]
fn kiln_toml_in_the_configmap_selects_the_kube_executor_and_matches_the_mounts() {
    let install = Install::load();
    let mut configs = vec![];
    for (dir, _) in INSTALLS {
        let build = install.build(dir);
        let d = build.deployment();
        let config = build.config("kiln", "kiln.toml");
        assert_eq!(config.executor.kind, "kube");
        assert_eq!(config.kube.templates_dir.as_deref(), Some(Path::new("/etc/kiln/job-templates")));
        assert_eq!(config.kube.namespace_prefix, "kiln-");
        assert_eq!(config.store.data_dir, Path::new("/var/lib/kiln"));
        assert_eq!(config.server.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(config.toolchains.dockerfile_builder.as_deref(), Some("buildkit"));
        // The admin token never sits in the ConfigMap (it comes from the Secret kiln-admin), nor
        // the database URL with its password (from the Secret kiln-database).
        let text = &build.config_map("kiln").data.as_ref().unwrap()["kiln.toml"];
        assert!(!text.contains("admin_token ="), "deploy/{dir}");
        assert!(config.store.url.is_none() && !text.contains("postgres://"), "deploy/{dir}: no database URL in kiln.toml");

        // The paths of the config are where the Deployment mounts things: the data dir is the PVC
        // on SQLite, scratch space on PostgreSQL.
        let data = volume_at(d, config.store.data_dir.to_str().unwrap());
        match dir {
            "" => assert!(data.persistent_volume_claim.is_some(), "SQLite: the database on the PVC"),
            _ => assert!(data.empty_dir.is_some(), "deploy/{dir}: scratch clones on an emptyDir"),
        }
        assert!(volume_at(d, config.kube.templates_dir.as_ref().unwrap().to_str().unwrap()).config_map.is_some());
        let container_port = kiln_container(d).ports.iter().flatten().find(|p| p.name.as_deref() == Some("http")).unwrap();
        assert_eq!(container_port.container_port, i32::from(config.server.listen.port()));

        // The Service: port 80 to the named port.
        let svc = build
            .applied()
            .find_map(|o| if let Object::Service(s) = o { Some(s) } else { None })
            .expect("a Service");
        let spec = svc.spec.as_ref().unwrap();
        let port = &spec.ports.as_ref().unwrap()[0];
        assert_eq!(port.port, 80);
        assert_eq!(port.target_port, Some(IntOrString::String("http".into())));
        let pod_labels = d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.clone().unwrap();
        for (k, v) in spec.selector.as_ref().expect("a selector") {
            assert_eq!(pod_labels.get(k), Some(v), "Service selector {k}={v} matches the Kiln pod");
        }
        configs.push(config);
    }
    // postgres/kiln.toml is ../kiln.toml but for the settings of several replicas.
    let [sqlite, postgres] = &configs[..] else { unreachable!() };
    assert_eq!(format!("{:?}", sqlite.kube), format!("{:?}", postgres.kube));
    assert_eq!(format!("{:?}", sqlite.toolchains), format!("{:?}", postgres.toolchains));
    assert_eq!(
        (sqlite.executor.max_concurrent_builds, sqlite.executor.build_timeout_secs),
        (postgres.executor.max_concurrent_builds, postgres.executor.build_timeout_secs)
    );
}

#[test]
fn the_cluster_role_grants_exactly_what_the_kube_executor_uses() {
    let install = Install::load();
    for (dir, _) in INSTALLS {
        assert_rbac(&install, &install.build(dir));
    }
}

fn assert_rbac(install: &Install, build: &Build) {
    let roles: Vec<&ClusterRole> =
        build.applied().filter_map(|o| if let Object::ClusterRole(r) = o { Some(r) } else { None }).collect();
    let names: Vec<&str> = roles.iter().map(|r| r.metadata.name.as_deref().unwrap()).collect();
    assert_eq!(names, EXPECTED_GRANTS.iter().map(|(n, _)| *n).collect::<Vec<_>>(), "the ClusterRoles");
    for (role, (_, grants)) in roles.iter().zip(EXPECTED_GRANTS) {
        assert!(role.aggregation_rule.is_none());
        let mut granted = BTreeSet::new();
        for rule in role.rules.iter().flatten() {
            assert!(rule.non_resource_urls.is_none() && rule.resource_names.is_none(), "{rule:?}");
            for list in [rule.api_groups.as_deref().unwrap_or_default(), rule.resources.as_deref().unwrap_or_default(), &rule.verbs] {
                assert!(!list.iter().any(|s| s.contains('*')), "no wildcard: {rule:?}");
            }
            for g in rule.api_groups.iter().flatten() {
                for r in rule.resources.iter().flatten() {
                    for v in &rule.verbs {
                        assert!(granted.insert((g.clone(), r.clone(), v.clone())), "granted twice: {g}/{r} {v}");
                    }
                }
            }
        }
        let expected: BTreeSet<(String, String, String)> =
            grants.iter().flat_map(|(g, r, verbs)| verbs.iter().map(move |v| (g.to_string(), r.to_string(), v.to_string()))).collect();
        assert_eq!(granted, expected, "{:?}", role.metadata.name);
        for (_, _, v) in &granted {
            assert!(!["escalate", "bind", "impersonate"].contains(&v.as_str()));
        }
    }
    let kiln_sa = |subjects: &[k8s_openapi::api::rbac::v1::Subject]| {
        subjects.len() == 1 && (subjects[0].kind.as_str(), subjects[0].name.as_str(), subjects[0].namespace.as_deref()) == ("ServiceAccount", "kiln", Some("kiln"))
    };

    // Cluster-wide: one binding in the install, of the read-only role. Nothing bound
    // cluster-wide creates, changes or deletes anything, nor touches a Secret.
    let bindings: Vec<&ClusterRoleBinding> =
        build.applied().filter_map(|o| if let Object::ClusterRoleBinding(b) = o { Some(b) } else { None }).collect();
    assert_eq!(bindings.len(), 1);
    let b = bindings[0];
    assert_eq!((b.role_ref.kind.as_str(), b.role_ref.name.as_str()), ("ClusterRole", "kiln"));
    assert!(kiln_sa(b.subjects.as_deref().unwrap_or_default()));

    // Everywhere in deploy/ (the optional parts too): every ClusterRoleBinding only reads, except
    // exactly the provisioning component's three rules.
    let all_roles: Vec<(&str, &ClusterRole)> =
        install.objects.iter().filter_map(|(f, o)| if let Object::ClusterRole(r) = o { Some((f.as_str(), r)) } else { None }).collect();
    let mut bound_cluster_wide = BTreeSet::new();
    for (file, o) in &install.objects {
        let Object::ClusterRoleBinding(b) = o else { continue };
        assert!(kiln_sa(b.subjects.as_deref().unwrap_or_default()), "{file}: a ClusterRoleBinding of someone other than Kiln");
        assert_eq!(b.role_ref.kind, "ClusterRole", "{file}");
        let name = b.role_ref.name.as_str();
        let (role_file, role) = all_roles.iter().find(|(_, r)| r.metadata.name.as_deref() == Some(name)).unwrap_or_else(|| panic!("{file}: no ClusterRole {name} in deploy/"));
        assert_eq!(Path::new(role_file).parent(), Path::new(file).parent(), "{file}: binds a role of another part of deploy/");
        bound_cluster_wide.insert((file.clone(), name.to_string()));
        let mut writes = BTreeSet::new();
        for rule in role.rules.iter().flatten() {
            assert!(rule.non_resource_urls.is_none(), "{rule:?}");
            assert!(!rule.resources.iter().flatten().any(|r| r == "secrets" || r.contains('*')), "cluster-wide Secret access: {rule:?}");
            for v in rule.verbs.iter().filter(|v| !["get", "list", "watch"].contains(&v.as_str())) {
                for g in rule.api_groups.iter().flatten() {
                    for r in rule.resources.iter().flatten() {
                        writes.insert((g.clone(), r.clone(), v.clone(), rule.resource_names.clone().unwrap_or_default()));
                    }
                }
            }
        }
        if file == "provisioning/rbac.yaml" {
            let expected: BTreeSet<_> = PROVISIONER_RULES
                .iter()
                .map(|(g, r, v, names)| (g.to_string(), r.to_string(), v.to_string(), names.iter().map(|n| n.to_string()).collect::<Vec<_>>()))
                .collect();
            assert_eq!(writes, expected, "{file}: the provisioner may create namespaces and rolebindings and bind kiln-builds, nothing else");
            // Each rule exactly as listed: no verb or resource added beside them.
            let rules: Vec<_> = role.rules.iter().flatten().collect();
            assert_eq!(rules.len(), PROVISIONER_RULES.len(), "{file}: {rules:?}");
            for rule in rules {
                assert!(rule.verbs.len() == 1 && rule.resources.as_ref().map(Vec::len) == Some(1) && rule.api_groups.as_ref().map(Vec::len) == Some(1), "{file}: one group, resource, verb per rule: {rule:?}");
            }
        } else {
            assert!(writes.is_empty(), "{file}: a cluster-wide write: {writes:?}");
        }
    }
    assert_eq!(
        bound_cluster_wide,
        [("base/rbac.yaml".to_string(), "kiln".to_string()), ("provisioning/rbac.yaml".to_string(), "kiln-provisioner".to_string())].into(),
        "ClusterRoleBindings in deploy/"
    );
    // What the provisioner may bind is what Kiln binds when it provisions.
    assert_eq!(builder_api::executor::kube::provision::BUILDS_ROLE, "kiln-builds");

    // Per namespace: the RoleBinding an operator applies in each build / deploy namespace.
    for (file, role) in [("build-namespace/rolebinding.yaml", "kiln-builds"), ("deploy-namespace/rolebinding.yaml", "kiln-deploys")] {
        let rb = install
            .objects
            .iter()
            .find_map(|(f, o)| match o {
                Object::RoleBinding(rb) if f == file => Some(rb),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no RoleBinding in deploy/{file}"));
        assert_eq!((rb.role_ref.kind.as_str(), rb.role_ref.name.as_str()), ("ClusterRole", role), "{file}");
        assert!(rb.metadata.namespace.is_none(), "{file}: applied with -n <namespace>");
        assert!(kiln_sa(rb.subjects.as_deref().unwrap_or_default()), "{file}");
    }

    // In Kiln's own namespace: the one Role of deploy/, the Lease of the singleton loops, bound to
    // Kiln alone. create cannot name its object; get and update name the Lease.
    let roles: Vec<(&str, &Role)> =
        install.objects.iter().filter_map(|(f, o)| if let Object::Role(r) = o { Some((f.as_str(), r)) } else { None }).collect();
    assert_eq!(roles.len(), 1, "one Role in deploy/: {roles:?}");
    let (file, role) = roles[0];
    assert!(build.files.iter().any(|f| f == file), "deploy/{}: applies {file}", build.dir);
    assert_eq!((role.metadata.name.as_deref(), role.metadata.namespace.as_deref()), (Some(LEASE_ROLE), Some("kiln")), "{file}");
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        for g in rule.api_groups.iter().flatten() {
            for r in rule.resources.iter().flatten() {
                for v in &rule.verbs {
                    assert!(granted.insert((g.clone(), r.clone(), v.clone(), rule.resource_names.clone().unwrap_or_default())), "{file}: {g}/{r} {v} twice");
                }
            }
        }
    }
    let expected: BTreeSet<_> = LEASE_RULES
        .iter()
        .map(|(g, r, v, names)| (g.to_string(), r.to_string(), v.to_string(), names.iter().map(|n| n.to_string()).collect::<Vec<_>>()))
        .collect();
    assert_eq!(granted, expected, "{file}");
    let role_bindings: Vec<&RoleBinding> = build
        .applied()
        .filter_map(|o| match o {
            Object::RoleBinding(b) if b.role_ref.kind == "Role" => Some(b),
            _ => None,
        })
        .collect();
    assert_eq!(role_bindings.len(), 1, "deploy/{}: one RoleBinding of a Role", build.dir);
    let rb = role_bindings[0];
    assert_eq!((rb.role_ref.name.as_str(), rb.metadata.namespace.as_deref()), (LEASE_ROLE, Some("kiln")));
    assert!(kiln_sa(rb.subjects.as_deref().unwrap_or_default()));
}

#[test]
fn the_job_templates_configmap_is_the_repository_job_templates_byte_for_byte() {
    let install = Install::load();
    let build = install.sqlite();
    let cm = build.config_map("kiln-job-templates");
    let data = cm.data.as_ref().expect("data");
    assert!(cm.binary_data.is_none());
    let keys: BTreeSet<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(keys, TEMPLATE_FILES.into_iter().collect(), "keys of kiln-job-templates");
    let mut in_repo: Vec<String> = std::fs::read_dir(repo().join("job-templates"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    in_repo.sort();
    let mut expected: Vec<String> = TEMPLATE_FILES.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(in_repo, expected, "job-templates/ holds the templates the ConfigMap carries");
    for name in TEMPLATE_FILES {
        let original = std::fs::read(repo().join("job-templates").join(name)).unwrap();
        assert!(
            data[name].as_bytes() == original.as_slice(),
            "deploy/base/job-templates/{name} differs from job-templates/{name}: cp job-templates/*.yaml deploy/base/job-templates/"
        );
    }
    // They parse as Jobs, and Kiln accepts the directory the way it reads it at start.
    let copies = install.objects.iter().filter(|(f, o)| f.starts_with("base/job-templates/") && matches!(o, Object::Job(_)));
    assert_eq!(copies.count(), TEMPLATE_FILES.len());
    Templates::load(&deploy_dir().join("base/job-templates")).unwrap();
    // Both installs carry this one ConfigMap (base/ generates it).
    assert_eq!(install.postgres().config_map("kiln-job-templates").data, cm.data);
}

/// The last `USER` of the final stage of a Dockerfile.
fn dockerfile_user(text: &str) -> Option<String> {
    let last_stage = text.rsplit_once("\nFROM ").map(|(_, s)| s).unwrap_or(text);
    last_stage.lines().filter_map(|l| l.trim().strip_prefix("USER ")).last().map(|u| u.trim().to_string())
}

#[test]
fn every_image_of_the_job_templates_is_built_by_a_dockerfile_in_build_images() {
    let dir = repo().join("build-images");
    let mut used = BTreeSet::new();
    for name in TEMPLATE_FILES {
        let path = repo().join("job-templates").join(name);
        let job: Job = typed(&path, &std::fs::read_to_string(&path).unwrap());
        let pod = job.spec.unwrap().template.spec.unwrap();
        let pod_user = pod.security_context.as_ref().and_then(|s| s.run_as_user);
        for c in pod.init_containers.iter().flatten().chain(pod.containers.iter()) {
            let image = c.image.as_deref().unwrap_or_else(|| panic!("{name}: container {} has no image", c.name));
            let (_, dockerfile) = IMAGE_DOCKERFILES
                .iter()
                .find(|(i, _)| *i == image)
                .unwrap_or_else(|| panic!("{name}: image {image} of {} is in no row of IMAGE_DOCKERFILES", c.name));
            let text = std::fs::read_to_string(dir.join(dockerfile))
                .unwrap_or_else(|e| panic!("build-images/{dockerfile} (image {image}): {e}"));
            assert!(text.contains(image), "build-images/{dockerfile} names the image it builds ({image})");
            // The build images run as the template's user; kiln-tools is a static binary that
            // runs as any user (it is the clone step of dockerfile.yaml with uid 1000 too).
            let run_as = c.security_context.as_ref().and_then(|s| s.run_as_user).or(pod_user).expect("runAsUser");
            if *dockerfile != "kiln-tools.Dockerfile" {
                let user = dockerfile_user(&text).unwrap_or_else(|| panic!("build-images/{dockerfile} sets no USER"));
                assert_eq!(user.split(':').next().unwrap(), run_as.to_string(), "{name}/{}: USER of {dockerfile}", c.name);
            }
            used.insert(*dockerfile);
        }
    }
    // Every image Kiln runs is tagged with Kiln's version, alone or followed by `-<toolchain>`:
    // each carries that release's kiln. So is the tools image the others copy kiln from.
    for (image, dockerfile) in IMAGE_DOCKERFILES {
        let tag = image.rsplit_once(':').unwrap().1;
        assert!(tag == KILN_VERSION || tag.starts_with(&format!("{KILN_VERSION}-")), "{image}: tag {tag} is not Kiln's version {KILN_VERSION}");
        let text = std::fs::read_to_string(dir.join(dockerfile)).unwrap();
        for arg in text.lines().filter_map(|l| l.strip_prefix("ARG KILN_TOOLS_IMAGE=")) {
            assert_eq!(arg, format!("ghcr.io/kiln-dev/kiln-tools:{KILN_VERSION}"), "{dockerfile}: the kiln it copies");
        }
    }
    // Every build image carries kiln at the same place on PATH.
    for (_, dockerfile) in IMAGE_DOCKERFILES {
        assert!(used.contains(dockerfile), "{dockerfile} is in IMAGE_DOCKERFILES but no template uses it");
        let text = std::fs::read_to_string(dir.join(dockerfile)).unwrap();
        assert!(text.contains("/usr/local/bin/kiln"), "{dockerfile} puts kiln at /usr/local/bin/kiln");
    }
    // The rest of build-images/: the APM agent layout and the README.
    let apm = std::fs::read_to_string(dir.join("apm-agent.Dockerfile")).unwrap();
    assert!(apm.contains("/opt/apm/elastic/elastic-apm-agent.jar"));
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    for (image, dockerfile) in IMAGE_DOCKERFILES {
        assert!(readme.contains(image) && readme.contains(dockerfile), "build-images/README.md lists {image}");
    }
}

fn network_policies(install: &Install) -> Vec<(&str, &NetworkPolicy)> {
    install.objects.iter().filter_map(|(f, o)| if let Object::NetworkPolicy(p) = o { Some((f.as_str(), p)) } else { None }).collect()
}

/// (protocol, port) of every port of an egress rule; a rule without ports allows every port.
fn rule_ports(ports: Option<&Vec<k8s_openapi::api::networking::v1::NetworkPolicyPort>>) -> Vec<(String, IntOrString)> {
    let ports = ports.filter(|p| !p.is_empty()).expect("a rule without ports allows every port");
    ports
        .iter()
        .map(|p| {
            assert!(p.end_port.is_none(), "no port ranges: {p:?}");
            (p.protocol.clone().unwrap_or_else(|| "TCP".into()), p.port.clone().expect("a port"))
        })
        .collect()
}

/// What a rule's peer may be: CoreDNS in kube-system, or an operator's address block (never the
/// whole internet). A rule without peers, or a bare namespaceSelector, would reach everything.
fn is_dns_peer(peer: &k8s_openapi::api::networking::v1::NetworkPolicyPeer) -> bool {
    let ns = peer.namespace_selector.as_ref().and_then(|s| s.match_labels.as_ref());
    let pods = peer.pod_selector.as_ref().and_then(|s| s.match_labels.as_ref());
    ns.and_then(|l| l.get("kubernetes.io/metadata.name")).map(String::as_str) == Some("kube-system")
        && pods.and_then(|l| l.get("k8s-app")).map(String::as_str) == Some("kube-dns")
        && peer.ip_block.is_none()
}

fn assert_limited_egress(what: &str, policy: &NetworkPolicy, allowed: &[(&str, IntOrString)]) -> BTreeSet<(String, String)> {
    let spec = policy.spec.as_ref().unwrap();
    let mut seen = BTreeSet::new();
    let mut dns = false;
    for rule in spec.egress.iter().flatten() {
        let peers = rule.to.as_ref().filter(|t| !t.is_empty()).unwrap_or_else(|| panic!("{what}: an egress rule without `to` reaches everything"));
        let ports = rule_ports(rule.ports.as_ref());
        for peer in peers {
            if is_dns_peer(peer) {
                dns = true;
                let mut got: Vec<_> = ports.clone();
                got.sort_by_key(|(p, _)| p.clone());
                assert_eq!(got, vec![("TCP".to_string(), IntOrString::Int(53)), ("UDP".into(), IntOrString::Int(53))], "{what}: DNS");
                continue;
            }
            let block = peer.ip_block.as_ref().unwrap_or_else(|| panic!("{what}: a peer that is neither DNS nor an address block: {peer:?}"));
            assert!(peer.namespace_selector.is_none() && peer.pod_selector.is_none(), "{what}: {peer:?}");
            assert!(!["0.0.0.0/0", "::/0"].contains(&block.cidr.as_str()), "{what}: egress to everywhere");
            for (proto, port) in &ports {
                assert!(allowed.iter().any(|(p, n)| p == proto && n == port), "{what}: egress to {} on {proto} {port:?} is not a listed port", block.cidr);
                let port = match port { IntOrString::Int(n) => n.to_string(), IntOrString::String(s) => s.clone() };
                seen.insert((block.cidr.clone(), port));
            }
        }
    }
    assert!(dns, "{what}: DNS to CoreDNS in kube-system");
    seen
}

/// deploy/build-namespace/networkpolicy.yaml: every pod of a build namespace, no ingress at all,
/// egress only to CoreDNS on 53 and to the operator's address blocks (git, registries, proxies) on
/// HTTPS. Applied per build namespace, so it names none (and kustomization.yaml does not apply it
/// into `kiln`).
#[test]
fn the_build_namespace_policy_denies_all_ingress_and_limits_egress_to_dns_git_registries_and_proxies() {
    let install = Install::load();
    let policies = network_policies(&install);
    let build: Vec<&NetworkPolicy> = policies.iter().filter(|(f, _)| f.starts_with("build-namespace/")).map(|(_, p)| *p).collect();
    assert_eq!(build.len(), 1, "one policy in deploy/build-namespace/");
    let policy = build[0];
    assert_eq!(policy.metadata.namespace, None, "applied with -n <build namespace>");
    for (dir, _) in INSTALLS {
        assert!(!install.build(dir).files.iter().any(|f| f.starts_with("build-namespace/")), "deploy/{dir}: not applied into kiln");
    }
    let spec = policy.spec.as_ref().unwrap();
    assert_eq!(spec.pod_selector, Some(Default::default()), "every pod of the namespace");
    let types = spec.policy_types.clone().unwrap_or_default();
    assert!(types.contains(&"Ingress".to_string()) && types.contains(&"Egress".to_string()), "{types:?}");
    assert!(spec.ingress.as_ref().is_none_or(|i| i.is_empty()), "no ingress rule: nothing comes in");
    let seen = assert_limited_egress("build namespace", policy, &[("TCP", IntOrString::Int(443))]);
    // Three operator-edited blocks: git, registries, proxies (placeholders in the documentation ranges).
    assert_eq!(seen.len(), 3, "{seen:?}");
    let text = std::fs::read_to_string(deploy_dir().join("build-namespace/networkpolicy.yaml")).unwrap();
    for what in ["git", "egistr", "proxy", "RFC 5737", "kubectl -n"] {
        assert!(text.contains(what), "the comments explain {what}");
    }
    let readme = std::fs::read_to_string(deploy_dir().join("README.md")).unwrap();
    assert!(readme.contains("build-namespace/networkpolicy.yaml"), "deploy/README.md says to apply it per build namespace");
}

/// deploy/networkpolicy.yaml: the Kiln pod takes traffic only on its HTTP port, and reaches only
/// DNS, the API server, git and the registries.
#[test]
fn the_kiln_namespace_policy_admits_only_the_http_port_and_limits_egress() {
    let install = Install::load();
    for (dir, _) in INSTALLS {
        assert_kiln_network_policy(&install.build(dir));
    }
}

fn assert_kiln_network_policy(build: &Build) {
    let applied: Vec<&NetworkPolicy> =
        build.applied().filter_map(|o| if let Object::NetworkPolicy(p) = o { Some(p) } else { None }).collect();
    assert_eq!(applied.len(), 1, "kustomization.yaml applies the Kiln policy");
    let policy = applied[0];
    assert_eq!(policy.metadata.namespace.as_deref(), Some("kiln"));
    let spec = policy.spec.as_ref().unwrap();
    let pod_labels = build.deployment().spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.clone().unwrap();
    for (k, v) in spec.pod_selector.as_ref().and_then(|s| s.match_labels.as_ref()).expect("selects the Kiln pod") {
        assert_eq!(pod_labels.get(k), Some(v), "selector {k}={v}");
    }
    let types = spec.policy_types.clone().unwrap_or_default();
    assert!(types.contains(&"Ingress".to_string()) && types.contains(&"Egress".to_string()), "{types:?}");
    let ingress = spec.ingress.as_ref().expect("ingress to the HTTP port");
    assert_eq!(ingress.len(), 1);
    let container_port = kiln_container(build.deployment()).ports.iter().flatten().find(|p| p.name.as_deref() == Some("http")).unwrap();
    assert_eq!(container_port.container_port, 8080);
    assert_eq!(rule_ports(ingress[0].ports.as_ref()), vec![("TCP".to_string(), IntOrString::String("http".into()))]);
    let seen = assert_limited_egress("kiln", policy, &[("TCP", IntOrString::Int(443)), ("TCP", IntOrString::Int(6443))]);
    assert!(seen.iter().any(|(_, p)| p == "6443"), "the API server: {seen:?}");
}

/// The per-namespace parts an operator applies with kustomize: `build-namespace/` and
/// `deploy-namespace/` are bases that name no namespace and list every manifest of their
/// directory; the overlays in `examples/` set a namespace and use them; `provisioning/` is a
/// Component that grants the provisioner's rights and turns the mode on in the Deployment the way
/// config.rs reads it.
#[test]
fn the_per_namespace_bases_their_overlays_and_the_provisioning_component_are_complete() {
    let install = Install::load();
    let files_in = |dir: &str| -> BTreeSet<String> {
        install.objects.iter().filter_map(|(f, _)| f.strip_prefix(&format!("{dir}/")).filter(|r| !r.contains('/')).map(String::from)).collect()
    };
    let listed_files = |dir: &str, part: &Kustomization| -> BTreeSet<String> {
        for r in &part.resources {
            let path = deploy_dir().join(dir).join(r);
            assert!(path.exists(), "{dir}/kustomization.yaml lists {r}, which is not there");
            if path.is_dir() {
                assert!(path.join("kustomization.yaml").exists(), "{dir}: {r} is a directory without kustomization.yaml");
            }
        }
        for c in &part.components {
            let text = std::fs::read_to_string(deploy_dir().join(dir).join(c).join("kustomization.yaml")).unwrap_or_else(|e| panic!("{dir}: component {c}: {e}"));
            assert!(text.contains("kind: Component"), "{dir}: {c} is not a Component");
        }
        part.resources.iter().filter(|r| r.ends_with(".yaml")).cloned().collect()
    };

    for (dir, expected) in [
        ("build-namespace", &["networkpolicy.yaml", "rolebinding.yaml", "serviceaccount.yaml"][..]),
        ("deploy-namespace", &["rolebinding.yaml"][..]),
    ] {
        let part = install.kustomizations.get(dir).unwrap_or_else(|| panic!("no deploy/{dir}/kustomization.yaml"));
        assert_eq!((part.api_version.as_str(), part.kind.as_str()), ("kustomize.config.k8s.io/v1beta1", "Kustomization"), "{dir}: a base overlays use in resources:");
        assert_eq!(part.namespace, None, "{dir}: the namespace comes from the overlay or -n");
        let listed = listed_files(dir, part);
        assert_eq!(listed, files_in(dir), "{dir}/kustomization.yaml lists every manifest of the directory");
        assert_eq!(listed, expected.iter().map(|s| s.to_string()).collect(), "{dir}");
        for (file, o) in install.objects.iter().filter(|(f, _)| f.starts_with(&format!("{dir}/"))) {
            let ns = match o {
                Object::RoleBinding(x) => &x.metadata.namespace,
                Object::ServiceAccount(x) => &x.metadata.namespace,
                Object::NetworkPolicy(x) => &x.metadata.namespace,
                other => panic!("{file}: unexpected {other:?}"),
            };
            assert_eq!(ns, &None, "{file}: names no namespace");
        }
        let text = std::fs::read_to_string(deploy_dir().join(dir).join("kustomization.yaml")).unwrap();
        assert!(text.contains(&format!("apply -k deploy/{dir}/")) || text.contains("apply -k deploy/examples/"), "{dir}: the comment says how to apply it");
        // `kubectl apply -f <dir>/` would also send kustomization.yaml to the API server.
        for f in files_in(dir) {
            let text = std::fs::read_to_string(deploy_dir().join(dir).join(&f)).unwrap();
            assert!(!text.contains(&format!("apply -f deploy/{dir}/\n")), "{dir}/{f}: apply -f on the directory");
        }
    }

    // The example overlays: one per build namespace, one per deploy namespace.
    let overlays: Vec<(&String, &Kustomization)> = install.kustomizations.iter().filter(|(d, _)| d.starts_with("examples/")).collect();
    for (base, namespace) in [("../../build-namespace", "kiln-payments"), ("../../deploy-namespace", "payments")] {
        let (dir, part) = overlays
            .iter()
            .find(|(_, p)| p.resources.iter().any(|r| r == base))
            .unwrap_or_else(|| panic!("no overlay in deploy/examples/ uses {base}"));
        assert_eq!(part.kind, "Kustomization", "{dir}");
        assert_eq!(part.namespace.as_deref(), Some(namespace), "{dir}");
        listed_files(dir, part);
        // A Namespace the overlay brings is the one it puts everything into.
        for (file, o) in install.objects.iter().filter(|(f, _)| f.starts_with(&format!("{dir}/"))) {
            if let Object::Namespace(n) = o {
                assert!(part.resources.iter().any(|r| file.ends_with(&format!("/{r}"))), "{file}: not listed");
                assert_eq!(n.metadata.name.as_deref(), Some(namespace), "{file}");
            }
        }
    }

    // The optional provisioning component: a Component with the provisioner's ClusterRole and
    // binding, and the env var that turns the mode on, patched into the Kiln Deployment.
    let part = install.kustomizations.get("provisioning").expect("deploy/provisioning/kustomization.yaml");
    assert_eq!((part.api_version.as_str(), part.kind.as_str()), ("kustomize.config.k8s.io/v1alpha1", "Component"));
    assert_eq!(listed_files("provisioning", part), files_in("provisioning"));
    for (dir, _) in INSTALLS {
        assert!(!install.build(dir).files.iter().any(|f| f.starts_with("provisioning")), "optional: not in deploy/{dir} by default");
    }
    assert_eq!(part.patches.len(), 1);
    let patch = &part.patches[0];
    let sqlite = install.sqlite();
    let d = sqlite.deployment();
    assert_eq!((patch.target.kind.as_str(), patch.target.name.as_str()), ("Deployment", d.metadata.name.as_deref().unwrap()));
    let ops: Vec<serde_json::Value> = serde_saphyr::from_str(&patch.patch).unwrap();
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert_eq!((ops[0]["op"].as_str(), ops[0]["path"].as_str()), (Some("add"), Some("/spec/template/spec/containers/0/env/-")));
    assert!(kiln_container(d).env.as_ref().is_some_and(|e| !e.is_empty()), "the patch appends to the env list");
    let (name, value) = (ops[0]["value"]["name"].as_str().unwrap(), ops[0]["value"]["value"].as_str().unwrap());
    let mut config = sqlite.config("kiln", "kiln.toml");
    assert!(!config.kube.provision_namespaces, "off unless the component is used");
    config.apply_env(|n| (n == name).then(|| value.to_string())).unwrap();
    assert!(config.kube.provision_namespaces, "{name}={value} turns kube.provision_namespaces on");
    // The subject Kiln binds when it provisions is the ServiceAccount the install runs it as.
    assert_eq!(config.kube.service_account_ref(), Ok(("kiln", "kiln")));

    let readme = std::fs::read_to_string(deploy_dir().join("README.md")).unwrap();
    for what in ["build-namespace/", "deploy-namespace/", "provisioning", "provision_namespaces", "kiln-build", "apply -k deploy/examples/"] {
        assert!(readme.contains(what), "deploy/README.md explains {what}");
    }
    assert!(!readme.contains("../shared"));
}

/// The ServiceAccount build pods run as: in `build-namespace/`, no token mounted, and no
/// RoleBinding or ClusterRoleBinding anywhere in `deploy/` names it — it has no rights. Kiln's
/// provisioning makes the same one.
#[test]
fn the_build_pods_service_account_has_no_token_and_no_rights() {
    use builder_api::executor::kube::provision::BUILD_SERVICE_ACCOUNT;
    let install = Install::load();
    let accounts: Vec<(&str, &ServiceAccount)> = install
        .objects
        .iter()
        .filter_map(|(f, o)| match o {
            Object::ServiceAccount(sa) if sa.metadata.name.as_deref() == Some(BUILD_SERVICE_ACCOUNT) => Some((f.as_str(), sa)),
            _ => None,
        })
        .collect();
    assert_eq!(accounts.len(), 1, "one ServiceAccount {BUILD_SERVICE_ACCOUNT}: {accounts:?}");
    let (file, sa) = accounts[0];
    assert_eq!(file, "build-namespace/serviceaccount.yaml");
    assert_eq!(sa.automount_service_account_token, Some(false), "{file}: no token in build pods");
    assert!(sa.secrets.is_none() && sa.image_pull_secrets.is_none(), "{file}");
    for (f, o) in &install.objects {
        let subjects = match o {
            Object::RoleBinding(b) => b.subjects.as_deref().unwrap_or_default(),
            Object::ClusterRoleBinding(b) => b.subjects.as_deref().unwrap_or_default(),
            _ => continue,
        };
        for s in subjects {
            assert!(!(s.kind == "ServiceAccount" && s.name == BUILD_SERVICE_ACCOUNT), "{f} binds {BUILD_SERVICE_ACCOUNT}: {s:?}");
            // Nor a group it is in.
            assert!(!(s.kind == "Group" && s.name.starts_with("system:serviceaccounts")), "{f} binds every ServiceAccount: {s:?}");
        }
    }
    // The RoleBinding Kiln makes when it provisions is the one build-namespace/ brings.
    let rb = install
        .objects
        .iter()
        .find_map(|(f, o)| match o {
            Object::RoleBinding(rb) if f == "build-namespace/rolebinding.yaml" => Some(rb),
            _ => None,
        })
        .unwrap();
    assert_eq!(rb.metadata.name.as_deref(), Some(builder_api::executor::kube::provision::BUILDS_BINDING));
    assert_eq!(rb.role_ref.name, builder_api::executor::kube::provision::BUILDS_ROLE);
}

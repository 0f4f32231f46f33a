//! Kiln's configuration: typed sections read from an optional TOML file, then `KILN_*` env vars.
//! Every field has a default that works on a laptop: `kiln serve` with no config listens on
//! 127.0.0.1:8080, keeps SQLite under `.kiln/`, and runs builds with the local executor. Each
//! section lives beside its kind: `server.rs`, `executor.rs`, `kube.rs`, `clusters.rs`, `apm.rs`.

mod apm;
mod clusters;
mod executor;
mod kube;
mod server;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use apm::{default_java_options, AgentSource, ApmAgent, ApmConfig};
pub use clusters::{ClusterConfig, HarborConfig, RolloutConfig};
pub use executor::{ExecutorConfig, RegistryConfig, ToolchainConfig};
pub use kube::{validate_instance, InvalidSetting, KubeConfig, MAX_INSTANCE_LEN};
pub use server::{HooksConfig, LogsConfig, ServerConfig, StoreConfig};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub executor: ExecutorConfig,
    pub registry: RegistryConfig,
    pub toolchains: ToolchainConfig,
    pub kube: KubeConfig,
    pub logs: LogsConfig,
    /// The clusters Kiln rolls out to, each with its own registry (`[[clusters]]`).
    pub clusters: Vec<ClusterConfig>,
    pub harbor: HarborConfig,
    pub rollout: RolloutConfig,
    pub apm: ApmConfig,
    pub hooks: HooksConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {name}: {message}")]
    Env { name: &'static str, message: String },
    #[error("config {field}: {message}")]
    Invalid { field: &'static str, message: String },
}

impl Config {
    /// Reads the TOML file (when given), then applies `KILN_*` env vars on top.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.into(), source })?;
                toml::from_str(&text)
                    .map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?
            }
            None => Config::default(),
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        Ok(config)
    }

    /// The env vars that override the file; each maps to one field. Mapped by hand, not by a
    /// layering crate (figment's `Env` provider): the documented names are short (`KILN_LISTEN`,
    /// not `KILN_SERVER_LISTEN`) and several checks span sections.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(name: &'static str, v: String) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            v.parse().map_err(|e: T::Err| ConfigError::Env { name, message: e.to_string() })
        }
        fn list(v: String) -> Vec<String> {
            v.split([',', ' ']).filter(|s| !s.is_empty()).map(str::to_string).collect()
        }
        if let Some(v) = var("KILN_LISTEN") {
            self.server.listen = parse("KILN_LISTEN", v)?;
        }
        if let Some(v) = var("KILN_MAX_BODY_BYTES") {
            self.server.max_body_bytes = parse("KILN_MAX_BODY_BYTES", v)?;
        }
        if let Some(v) = var("KILN_ADMIN_TOKEN") {
            self.server.admin_token = Some(v);
        }
        if let Some(v) = var("KILN_TRUST_FORWARDED_FOR") {
            self.server.trust_forwarded_for = parse("KILN_TRUST_FORWARDED_FOR", v)?;
        }
        if let Some(v) = var("KILN_PUBLIC_URL") {
            if !(v.starts_with("http://") || v.starts_with("https://")) {
                return Err(ConfigError::Invalid { field: "server.public_url (KILN_PUBLIC_URL)", message: format!("{v:?} must be an http(s) URL") });
            }
            self.server.public_url = Some(v);
        }
        if let Some(v) = var("KILN_DATA_DIR") {
            self.store.data_dir = v.into();
        }
        if let Some(v) = var("KILN_DATABASE_URL") {
            self.store.url = Some(v).filter(|v| !v.is_empty());
        }
        if let Some(v) = var("KILN_SECRET_KEY_FILE") {
            self.store.secret_key_file = Some(v.into());
        }
        if let Some(v) = var("KILN_MAX_CONCURRENT_BUILDS") {
            self.executor.max_concurrent_builds = parse("KILN_MAX_CONCURRENT_BUILDS", v)?;
        }
        if let Some(v) = var("KILN_BUILD_TIMEOUT_SECS") {
            self.executor.build_timeout_secs = parse("KILN_BUILD_TIMEOUT_SECS", v)?;
        }
        if let Some(v) = var("KILN_STEP_NICE") {
            self.executor.step_nice = parse("KILN_STEP_NICE", v)?;
        }
        if let Some(v) = var("KILN_BINARY") {
            self.executor.kiln_binary = Some(v.into());
        }
        if let Some(v) = var("KILN_INSECURE_REGISTRIES") {
            self.registry.insecure = list(v);
        }
        if let Some(v) = var("KILN_REGISTRY_USERNAME") {
            self.registry.username = Some(v);
        }
        if let Some(v) = var("KILN_REGISTRY_PASSWORD") {
            self.registry.password = Some(v);
        }
        if let Some(v) = var("KILN_GOPROXY") {
            self.toolchains.goproxy = v;
        }
        if let Some(v) = var("KILN_MAVEN_ARGS") {
            self.toolchains.maven_args = list(v);
        }
        if let Some(v) = var("KILN_LOG_MAX_BYTES") {
            self.logs.max_bytes_per_build = parse("KILN_LOG_MAX_BYTES", v)?;
        }
        if let Some(v) = var("KILN_HARBOR_WEBHOOK_AUTH") {
            self.harbor.webhook_auth = Some(v);
        }
        if let Some(v) = var("KILN_HOOKS_RATE_PER_APP_PER_MINUTE") {
            self.hooks.rate_per_app_per_minute = parse("KILN_HOOKS_RATE_PER_APP_PER_MINUTE", v)?;
        }
        if let Some(v) = var("KILN_HOOKS_BURST") {
            self.hooks.burst = parse("KILN_HOOKS_BURST", v)?;
        }
        if let Some(v) = var("KILN_EXECUTOR") {
            self.executor.kind = v;
        }
        if let Some(v) = var("KILN_JOB_TEMPLATES") {
            self.kube.templates_dir = Some(v.into());
        }
        if let Some(v) = var("KILN_INSTANCE") {
            self.kube.instance = Some(v);
        }
        if let Some(v) = var("KILN_PROVISION_NAMESPACES") {
            self.kube.provision_namespaces = parse("KILN_PROVISION_NAMESPACES", v)?;
        }
        if let Some(v) = var("KILN_SERVICE_ACCOUNT") {
            self.kube.service_account = v;
        }
        if self.kube.provision_namespaces {
            self.kube.service_account_ref().map_err(|message| ConfigError::Invalid { field: "kube.service_account (KILN_SERVICE_ACCOUNT)", message: message.0 })?;
        }
        if let Some(url) = &self.store.url {
            if !crate::store::is_postgres_url(url) {
                return Err(ConfigError::Invalid {
                    field: "store.url (KILN_DATABASE_URL)",
                    message: format!("{} is not a PostgreSQL URL: use postgres://user:password@host:port/database", crate::store::display_database_url(url)),
                });
            }
        }
        if let Some(id) = &self.kube.instance {
            validate_instance(id).map_err(|message| ConfigError::Invalid { field: "kube.instance (KILN_INSTANCE)", message: message.0 })?;
        }
        if !["local", "kube"].contains(&self.executor.kind.as_str()) {
            return Err(ConfigError::Invalid {
                field: "executor.kind (KILN_EXECUTOR)",
                message: format!("{:?} is not one of local, kube", self.executor.kind),
            });
        }
        if let Some(b) = self.toolchains.dockerfile_builder.as_deref() {
            if !["buildah", "buildkit"].contains(&b) {
                return Err(ConfigError::Invalid {
                    field: "toolchains.dockerfile_builder",
                    message: format!("{b:?} is not one of buildah, buildkit"),
                });
            }
        }
        for (i, c) in self.clusters.iter().enumerate() {
            if c.name.is_empty() || c.registry.is_empty() {
                return Err(ConfigError::Invalid { field: "clusters", message: format!("cluster #{} needs a name and a registry", i + 1) });
            }
            if self.clusters[..i].iter().any(|o| o.name == c.name) {
                return Err(ConfigError::Invalid { field: "clusters", message: format!("cluster {:?} is configured twice", c.name) });
            }
        }
        self.apm.validate()?;
        if !(0..=19).contains(&self.executor.step_nice) {
            return Err(ConfigError::Invalid {
                field: "executor.step_nice (KILN_STEP_NICE)",
                message: format!("{} is not between 0 and 19", self.executor.step_nice),
            });
        }
        if self.executor.claim_lease_secs < 2 {
            return Err(ConfigError::Invalid {
                field: "executor.claim_lease_secs",
                message: format!("{} is less than 2: a replica renews its claims every third of the lease", self.executor.claim_lease_secs),
            });
        }
        if !(0.0..=3600.0).contains(&self.server.drain_secs) {
            return Err(ConfigError::Invalid { field: "server.drain_secs", message: format!("{} is not between 0 and 3600", self.server.drain_secs) });
        }
        if self.executor.max_concurrent_builds == 0 {
            return Err(ConfigError::Env {
                name: "KILN_MAX_CONCURRENT_BUILDS",
                message: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Tenant;

    #[test]
    fn env_overrides_file_values() {
        let mut c: Config = toml::from_str("[server]\nlisten = \"127.0.0.1:9000\"\n").unwrap();
        c.apply_env(|n| (n == "KILN_LISTEN").then(|| "127.0.0.1:9100".to_string())).unwrap();
        assert_eq!(c.server.listen.port(), 9100);
        assert_eq!(c.executor.kind, "local");
    }

    #[test]
    fn webhook_rate_limit_from_file_and_env() {
        let mut c: Config = toml::from_str("[hooks]\nrate_per_app_per_minute = 30\nburst = 5\n").unwrap();
        c.apply_env(|n| (n == "KILN_HOOKS_BURST").then(|| "7".to_string())).unwrap();
        assert_eq!((c.hooks.rate_per_app_per_minute, c.hooks.burst), (30, 7));
        assert!(toml::from_str::<Config>("[hooks]\nrate = 1\n").is_err(), "unknown keys are refused");
        let err = Config::default().apply_env(|n| (n == "KILN_HOOKS_RATE_PER_APP_PER_MINUTE").then(|| "-1".into())).unwrap_err();
        assert!(err.to_string().contains("KILN_HOOKS_RATE_PER_APP_PER_MINUTE"), "{err}");
    }

    #[test]
    fn namespace_provisioning_is_off_by_default_and_names_kilns_own_service_account() {
        let c = Config::default();
        assert!(!c.kube.provision_namespaces);
        assert_eq!(c.kube.service_account_ref(), Ok(("kiln", "kiln")));
        let mut c: Config = toml::from_str("[kube]\nprovision_namespaces = true\nservice_account = \"ops/kiln-prod\"\n").unwrap();
        c.apply_env(|_| None).unwrap();
        assert_eq!(c.kube.service_account_ref(), Ok(("ops", "kiln-prod")));
        let mut c = Config::default();
        c.apply_env(|n| (n == "KILN_PROVISION_NAMESPACES").then(|| "true".into())).unwrap();
        assert!(c.kube.provision_namespaces);
        let err = Config::default().apply_env(|n| (n == "KILN_PROVISION_NAMESPACES").then(|| "yes".into())).unwrap_err();
        assert!(err.to_string().contains("KILN_PROVISION_NAMESPACES"), "{err}");
        let err = Config::default()
            .apply_env(|n| match n {
                "KILN_PROVISION_NAMESPACES" => Some("true".into()),
                "KILN_SERVICE_ACCOUNT" => Some("kiln".into()),
                _ => None,
            })
            .unwrap_err();
        assert!(err.to_string().contains("kube.service_account"), "{err}");
    }

    #[test]
    fn the_store_is_sqlite_unless_a_postgres_url_is_given_and_its_password_is_never_shown() {
        assert_eq!(Config::default().store.url, None);
        let mut c: Config = toml::from_str("[store]\nurl = \"postgres://kiln:pw-in-file@db:5432/kiln\"\n").unwrap();
        c.apply_env(|_| None).unwrap();
        assert_eq!(c.store.location(), "postgres://db:5432/kiln");
        c.apply_env(|n| (n == "KILN_DATABASE_URL").then(|| "postgresql://kiln:pw-in-env@db2/kiln?sslmode=require".into())).unwrap();
        assert_eq!(c.store.url.as_deref(), Some("postgresql://kiln:pw-in-env@db2/kiln?sslmode=require"));
        let shown = format!("{c:?} {}", c.store.location());
        assert!(!shown.contains("pw-in") && shown.contains("postgresql://db2/kiln"), "{shown}");
        let err = Config::default().apply_env(|n| (n == "KILN_DATABASE_URL").then(|| "mysql://u:secretpw@db/kiln".into())).unwrap_err().to_string();
        assert!(err.contains("KILN_DATABASE_URL") && !err.contains("secretpw"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_clear_errors() {
        assert!(toml::from_str::<Config>("[server]\nlisen = 1\n").unwrap_err().to_string().contains("lisen"));
        let err = Config::default().apply_env(|n| (n == "KILN_LISTEN").then(|| "nope".into())).unwrap_err();
        assert!(err.to_string().contains("KILN_LISTEN"), "{err}");
    }

    #[test]
    fn apm_agents_are_checked() {
        let ok = "[[apm.agents]]\nname = \"tracer\"\nversion = \"1.2\"\nsource = { dir = \"/opt/agents/tracer\" }\n";
        let mut c: Config = toml::from_str(ok).unwrap();
        c.apply_env(|_| None).unwrap();
        assert!(c.apm.agents[0].java_options.contains("{agent}"));
        for bad in [
            "[[apm.agents]]\nname = \"t\"\nversion = \"1\"\nsource = { dir = \"/a\", tar_gz = \"/b\" }\n",
            "[[apm.agents]]\nname = \"t\"\nversion = \"1\"\nsource = { image = \"r.io/a:1\" }\n",
            "[[apm.agents]]\nname = \"../t\"\nversion = \"1\"\nsource = { dir = \"/a\" }\n",
            "[[apm.agents]]\nname = \"t\"\nversion = \"1\"\nsource = { dir = \"/a\" }\njava_options = \"-D{nope}\"\n",
        ] {
            let mut c: Config = toml::from_str(bad).unwrap();
            assert!(c.apply_env(|_| None).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_tenants_settings_win_over_the_config_and_fall_back_to_it() {
        let mut c = Config::default();
        c.kube.registry_secret = Some("kiln-registry".into());
        c.executor.build_timeout_secs = 1200;
        let mut t = Tenant { id: 1, name: "team".into(), created_at: 0, settings: Default::default() };
        assert_eq!(c.kube.namespace_for(&t), "kiln-team");
        assert_eq!(c.kube.registry_secret_for(&t), Some("kiln-registry"));
        assert_eq!(c.kube.cache_claim_for(&t), None);
        assert_eq!(c.executor.build_timeout_for(&t).as_secs(), 1200);
        t.settings.namespace = Some("builds".into());
        t.settings.registry_secret = Some("team-robot".into());
        t.settings.cache_claim = Some("team-cache".into());
        t.settings.build_timeout_secs = Some(600);
        assert_eq!(c.kube.namespace_for(&t), "builds");
        assert_eq!(c.kube.registry_secret_for(&t), Some("team-robot"));
        assert_eq!(c.kube.cache_claim_for(&t), Some("team-cache"));
        assert_eq!(c.executor.build_timeout_for(&t).as_secs(), 600);
    }

    #[test]
    fn debug_never_shows_secrets() {
        let mut c = Config::default();
        c.server.admin_token = Some("adm1n-secret".into());
        c.registry.password = Some("reg-secret".into());
        let shown = format!("{c:?}");
        assert!(!shown.contains("adm1n-secret") && !shown.contains("reg-secret"), "{shown}");
    }
}

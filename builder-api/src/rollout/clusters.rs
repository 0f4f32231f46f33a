//! The clusters Kiln rolls out to: their registries, and a Kubernetes client for each, made on
//! first use (an unreachable cluster fails only its own rollouts).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::ClusterConfig;
use crate::metrics::{metered_kube_client, Metrics};

/// Why no client for a cluster could be made.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster {0:?} is not configured")]
    NotConfigured(String),
    #[error("{0}")]
    InCluster(#[from] kube::config::InClusterError),
    #[error("{0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("{0}")]
    Client(#[from] kube::Error),
}

pub struct Clusters {
    configs: Vec<ClusterConfig>,
    clients: Mutex<HashMap<String, kube::Client>>,
    /// Every cluster's client counts its API errors (`kiln_kube_api_errors`).
    metrics: Arc<Metrics>,
}

impl Clusters {
    pub fn new(configs: Vec<ClusterConfig>, metrics: Arc<Metrics>) -> Clusters {
        Clusters { configs, clients: Mutex::default(), metrics }
    }

    pub fn all(&self) -> &[ClusterConfig] {
        &self.configs
    }

    pub fn get(&self, name: &str) -> Option<&ClusterConfig> {
        self.configs.iter().find(|c| c.name == name)
    }

    /// The clusters whose nodes pull from `registry` (`host[:port]`): several when they share
    /// one registry (one Harbor serving two clusters).
    pub fn pulling_from<'a>(&'a self, registry: &'a str) -> impl Iterator<Item = &'a ClusterConfig> + 'a {
        self.configs.iter().filter(move |c| c.registry == registry)
    }

    /// Uses `client` for the cluster `name` (tests hand in the fake API server's).
    pub fn set_client(&self, name: &str, client: kube::Client) {
        let client = metered_kube_client(client, self.metrics.clone());
        self.clients.lock().unwrap().insert(name.to_string(), client);
    }

    pub async fn client(&self, name: &str) -> Result<kube::Client, ClusterError> {
        if let Some(c) = self.clients.lock().unwrap().get(name) {
            return Ok(c.clone());
        }
        let cluster = self.get(name).ok_or_else(|| ClusterError::NotConfigured(name.to_string()))?;
        let config = if cluster.in_cluster {
            kube::Config::incluster()?
        } else {
            let options = kube::config::KubeConfigOptions { context: cluster.context.clone(), ..Default::default() };
            kube::Config::from_kubeconfig(&options).await?
        };
        let client = metered_kube_client(kube::Client::try_from(config)?, self.metrics.clone());
        self.clients.lock().unwrap().insert(name.to_string(), client.clone());
        Ok(client)
    }
}

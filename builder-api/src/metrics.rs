//! What `/metrics` serves: counters, gauges and histograms kept in memory by the code where things
//! happen (webhooks, scheduler, executors, replication, rollouts, deliveries, log followers), and
//! written in the Prometheus/OpenMetrics text format by `prometheus-client`. A scrape only encodes
//! these numbers: it never reads the store, so it costs the same with ten builds or a million.
//!
//! Counters and histograms start at zero with each process (Prometheus' `rate()` and
//! `histogram_quantile()` handle resets); the gauges of queued and running builds follow the
//! scheduler's in-memory queue and running set, which its first pass reads from the store.

use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of the text `encode` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub source: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub kind: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubeErrorLabels {
    pub verb: &'static str,
    /// The HTTP status (`404`, `500`, …), or `transport` when no answer came.
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds, from a webhook's few milliseconds to a build's hour.
fn seconds_buckets() -> Histogram {
    Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0])
}

/// Bytes sent by one image copy: nothing (every blob was there) up to a few GiB.
fn bytes_buckets() -> Histogram {
    Histogram::new([0.0, 1024.0 * 1024.0, 10.0 * 1024.0 * 1024.0, 50.0 * 1024.0 * 1024.0, 100.0 * 1024.0 * 1024.0, 500.0 * 1024.0 * 1024.0, 1024.0 * 1024.0 * 1024.0, 4.0 * 1024.0 * 1024.0 * 1024.0])
}

const COUNTER: &str = "counter";
const GAUGE: &str = "gauge";
const HISTOGRAM: &str = "histogram";

/// The registry being filled, and each family's name and type as `# TYPE` writes them.
#[derive(Default)]
struct Registering {
    registry: Registry,
    families: Vec<(&'static str, &'static str)>,
}

impl Registering {
    fn add(&mut self, name: &'static str, kind: &'static str, help: &str, metric: impl prometheus_client::registry::Metric) {
        self.registry.register(name, help, metric);
        self.families.push((name, kind));
    }
}

/// Every family Kiln exports, created once per process and held by `Context`.
pub struct Metrics {
    registry: Registry,
    /// (name, type) of each family, in the order `encode` writes them.
    families: Vec<(&'static str, &'static str)>,
    pub webhook_duration: HistogramFamily<SourceLabels>,
    pub webhook_deliveries: Family<DeliveryLabels, Counter>,
    pub queue_wait: Histogram,
    pub build_duration: HistogramFamily<BuildLabels>,
    pub step_duration: HistogramFamily<StepLabels>,
    pub replication_duration: HistogramFamily<ResultLabels>,
    pub replication_bytes: HistogramFamily<ResultLabels>,
    pub rollout_duration: HistogramFamily<ResultLabels>,
    pub kube_api_errors: Family<KubeErrorLabels, Counter>,
    pub gitlab_status_deliveries: Family<OutcomeLabels, Counter>,
    pub notifications: Family<OutcomeLabels, Counter>,
    pub builds_queued: Family<TenantLabels, Gauge>,
    pub builds_running: Family<TenantLabels, Gauge>,
    pub log_followers: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::default(),
            families: vec![],
            webhook_duration: Family::new_with_constructor(seconds_buckets),
            webhook_deliveries: Family::default(),
            queue_wait: seconds_buckets(),
            build_duration: Family::new_with_constructor(seconds_buckets),
            step_duration: Family::new_with_constructor(seconds_buckets),
            replication_duration: Family::new_with_constructor(seconds_buckets),
            replication_bytes: Family::new_with_constructor(bytes_buckets),
            rollout_duration: Family::new_with_constructor(seconds_buckets),
            kube_api_errors: Family::default(),
            gitlab_status_deliveries: Family::default(),
            notifications: Family::default(),
            builds_queued: Family::default(),
            builds_running: Family::default(),
            log_followers: Gauge::default(),
        };
        let mut r = Registering::default();
        // The families are handles (Arc inside): the registry's clones and ours are one metric.
        r.add("kiln_webhook_duration_seconds", HISTOGRAM, "Time to answer a webhook, by source (gitlab, harbor)", m.webhook_duration.clone());
        r.add(
            "kiln_webhook_deliveries",
            COUNTER,
            "Webhook deliveries by source and outcome (accepted, duplicate, ignored, refused)",
            m.webhook_deliveries.clone(),
        );
        r.add("kiln_build_queue_wait_seconds", HISTOGRAM, "Time builds waited Queued before they started", m.queue_wait.clone());
        r.add(
            "kiln_build_duration_seconds",
            HISTOGRAM,
            "Duration of finished builds (started to final state), by kind and result",
            m.build_duration.clone(),
        );
        r.add("kiln_build_step_duration_seconds", HISTOGRAM, "Duration of finished build steps, by step", m.step_duration.clone());
        r.add(
            "kiln_replication_duration_seconds",
            HISTOGRAM,
            "Duration of image copies to cluster registries, by result",
            m.replication_duration.clone(),
        );
        r.add("kiln_replication_bytes", HISTOGRAM, "Bytes sent by image copies to cluster registries, by result", m.replication_bytes.clone());
        r.add("kiln_rollout_duration_seconds", HISTOGRAM, "Duration of rollouts, by result (Complete, Failed, RolledBack)", m.rollout_duration.clone());
        r.add("kiln_kube_api_errors", COUNTER, "Kubernetes API answers of 4xx/5xx (or none), by verb and code", m.kube_api_errors.clone());
        r.add(
            "kiln_gitlab_status_deliveries",
            COUNTER,
            "GitLab commit status deliveries by outcome (delivered, refused, not_delivered)",
            m.gitlab_status_deliveries.clone(),
        );
        r.add(
            "kiln_notifications",
            COUNTER,
            "Build and rollout notifications by outcome (delivered, refused, not_delivered)",
            m.notifications.clone(),
        );
        r.add("kiln_builds_queued", GAUGE, "Builds waiting to start, by tenant", m.builds_queued.clone());
        r.add("kiln_builds_running", GAUGE, "Builds running, by tenant", m.builds_running.clone());
        r.add("kiln_log_followers", GAUGE, "Connected live log followers (SSE streams)", m.log_followers.clone());
        Metrics { registry: r.registry, families: r.families, ..m }
    }

    /// The text `/metrics` answers (ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String does not fail");
        out
    }

    /// The names of the families (as in `# TYPE` lines), for checks such as "every metric an alert
    /// rule uses exists". A counter's samples carry `_total`, a histogram's `_bucket`, `_sum`
    /// and `_count` after these.
    /// A labelled family is written only once it has a sample (before that it has no `# TYPE`
    /// line either), so these come from the registration, not from `encode`.
    pub fn family_names(&self) -> Vec<(String, String)> {
        self.families.iter().map(|(name, kind)| (name.to_string(), kind.to_string())).collect()
    }

    /// One webhook answered, with how long it took and what became of it.
    pub fn webhook(&self, source: &'static str, outcome: &'static str, started: Instant) {
        self.webhook_duration.get_or_create(&SourceLabels { source }).observe(started.elapsed().as_secs_f64());
        self.webhook_deliveries.get_or_create(&DeliveryLabels { source, outcome }).inc();
    }

    pub fn step_finished(&self, step: &str, seconds: f64) {
        self.step_duration.get_or_create(&StepLabels { step: step.to_string() }).observe(seconds);
    }

    pub fn gitlab_status(&self, outcome: &'static str) {
        self.gitlab_status_deliveries.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub fn notification(&self, outcome: &'static str) {
        self.notifications.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Sets the queued and running gauges of one tenant.
    pub fn set_tenant_builds(&self, tenant: &str, queued: i64, running: i64) {
        let labels = TenantLabels { tenant: tenant.to_string() };
        self.builds_queued.get_or_create(&labels).set(queued);
        self.builds_running.get_or_create(&labels).set(running);
    }

    /// A Kubernetes API answer that was an error (or no answer at all).
    pub fn kube_api_error(&self, verb: &'static str, code: Option<u16>) {
        let code = code.map_or_else(|| "transport".to_string(), |c| c.to_string());
        self.kube_api_errors.get_or_create(&KubeErrorLabels { verb, code }).inc();
    }
}

/// Counts a live log follower while it is held.
pub struct FollowerGuard(Gauge);

impl FollowerGuard {
    pub fn new(metrics: &Metrics) -> FollowerGuard {
        metrics.log_followers.inc();
        FollowerGuard(metrics.log_followers.clone())
    }
}

impl Drop for FollowerGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A Kubernetes client whose every request is seen on its way back: an answer of 400 or more (or
/// none) counts in `kiln_kube_api_errors` by verb and code. Wrapping the client, rather than each
/// call site, counts the calls of the executor's watch, log streams, Job creates and deletes,
/// namespace provisioning and rollouts alike, including the ones added later.
pub fn metered_kube_client(client: kube::Client, metrics: Arc<Metrics>) -> kube::Client {
    let namespace = client.default_namespace().to_string();
    kube::Client::new(Metered { client, metrics }, namespace)
}

#[derive(Clone)]
struct Metered {
    client: kube::Client,
    metrics: Arc<Metrics>,
}

type Req = http::Request<kube::client::Body>;
type Resp = http::Response<kube::client::Body>;

impl tower::Service<Req> for Metered {
    type Response = Resp;
    type Error = kube::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Resp, kube::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), kube::Error>> {
        // The inner client buffers its own requests; it is always ready to take one.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let verb = kube_verb(request.method(), request.uri());
        let (client, metrics) = (self.client.clone(), self.metrics.clone());
        Box::pin(async move {
            let answer = client.send(request).await;
            match &answer {
                Ok(r) if r.status().as_u16() >= 400 => metrics.kube_api_error(verb, Some(r.status().as_u16())),
                Ok(_) => {}
                Err(_) => metrics.kube_api_error(verb, None),
            }
            answer
        })
    }
}

/// The Kubernetes verb of a request, as RBAC and audit logs name it: a GET is `watch` with
/// `watch=true`, `list` on a collection, else `get` (an object or a subresource such as `log`).
pub fn kube_verb(method: &http::Method, uri: &http::Uri) -> &'static str {
    match *method {
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        http::Method::GET => {
            if uri.query().is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1")) {
                return "watch";
            }
            // `/api/v1/…` or `/apis/{group}/{version}/…`, then `namespaces/{ns}/` for a namespaced
            // resource, then `{resource}[/{name}[/{subresource}]]`.
            let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
            let skip = match segments.first() {
                Some(&"api") => 2,
                Some(&"apis") => 3,
                _ => return "get",
            };
            let rest = segments.get(skip..).unwrap_or_default();
            let rest = if rest.len() >= 3 && rest[0] == "namespaces" { &rest[2..] } else { rest };
            if rest.len() <= 1 {
                "list"
            } else {
                "get"
            }
        }
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_named_as_kubernetes_names_them() {
        let v = |m: http::Method, u: &str| kube_verb(&m, &u.parse().unwrap());
        assert_eq!(v(http::Method::GET, "/apis/batch/v1/namespaces/t/jobs?labelSelector=x"), "list");
        assert_eq!(v(http::Method::GET, "/apis/batch/v1/namespaces/t/jobs?watch=true&resourceVersion=5"), "watch");
        assert_eq!(v(http::Method::GET, "/apis/batch/v1/namespaces/t/jobs/kiln-7"), "get");
        assert_eq!(v(http::Method::GET, "/api/v1/namespaces/t/pods/p/log?follow=true"), "get");
        assert_eq!(v(http::Method::GET, "/api/v1/namespaces/t"), "get");
        assert_eq!(v(http::Method::GET, "/api/v1/namespaces"), "list");
        assert_eq!(v(http::Method::POST, "/apis/batch/v1/namespaces/t/jobs"), "create");
        assert_eq!(v(http::Method::PATCH, "/apis/apps/v1/namespaces/t/deployments/d"), "patch");
        assert_eq!(v(http::Method::DELETE, "/apis/batch/v1/namespaces/t/jobs/j"), "delete");
    }

    #[test]
    fn the_families_are_written_with_their_samples() {
        let m = Metrics::new();
        m.webhook("gitlab", "accepted", Instant::now());
        m.kube_api_error("create", Some(403));
        m.set_tenant_builds("team-a", 2, 1);
        let text = m.encode();
        assert!(text.contains("kiln_webhook_duration_seconds_count{source=\"gitlab\"} 1\n"), "{text}");
        assert!(text.contains("kiln_webhook_deliveries_total{source=\"gitlab\",outcome=\"accepted\"} 1\n"), "{text}");
        assert!(text.contains("kiln_kube_api_errors_total{verb=\"create\",code=\"403\"} 1\n"), "{text}");
        assert!(text.contains("kiln_builds_queued{tenant=\"team-a\"} 2\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    fn type_lines(text: &str) -> Vec<(String, String)> {
        (text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split_once(' ')))
            .map(|(name, kind)| (name.to_string(), kind.to_string()))
            .collect()
    }

    #[test]
    fn family_names_are_the_type_lines_once_every_family_has_a_sample() {
        let m = Metrics::new();
        // Before any sample only the families without labels are written.
        let unlabelled = [("kiln_build_queue_wait_seconds", "histogram"), ("kiln_log_followers", "gauge")];
        assert_eq!(type_lines(&m.encode()), unlabelled.map(|(n, k)| (n.to_string(), k.to_string())));
        m.webhook("harbor", "refused", Instant::now());
        m.build_duration.get_or_create(&BuildLabels { kind: "go".into(), result: "Succeeded".into() }).observe(1.0);
        m.step_finished("clone", 0.5);
        let copy = ResultLabels { result: "Verified".into() };
        m.replication_duration.get_or_create(&copy).observe(2.0);
        m.replication_bytes.get_or_create(&copy).observe(1e6);
        m.rollout_duration.get_or_create(&ResultLabels { result: "Complete".into() }).observe(3.0);
        m.kube_api_error("watch", None);
        m.gitlab_status("delivered");
        m.notification("refused");
        m.set_tenant_builds("t", 0, 0);
        assert_eq!(type_lines(&m.encode()), m.family_names());
    }
}

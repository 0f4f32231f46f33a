//! `/healthz` (the process answers), `/readyz` (the store answers), `/metrics` (Prometheus text).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use prometheus::proto::{Gauge, LabelPair, Metric, MetricFamily, MetricType, Summary};
use prometheus::TextEncoder;

use crate::context::AppState;
use crate::error::{ApiError, ApiResult};
use crate::store::BuildState;

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    match s.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("store not ready: {e}\n")),
    }
}

/// Computed from the store on each scrape, so the figures survive restarts.
pub async fn metrics(State(s): State<AppState>) -> ApiResult<impl IntoResponse> {
    let figures = Figures {
        builds: s.store.build_counts().await?,
        queue_wait: s.store.queue_wait_totals().await?,
        steps: s.store.step_duration_totals().await?,
        running: s.scheduler.running_count(),
    };
    let out = render(&figures).map_err(|e| ApiError::Internal(format!("encoding metrics: {e}")))?;
    Ok(([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], out))
}

/// What one scrape reports, as the store and the scheduler give it.
struct Figures {
    /// (state, builds in it); a state without builds is missing.
    builds: Vec<(String, i64)>,
    /// (count, sum of seconds).
    queue_wait: (i64, f64),
    /// (step name, count, sum of seconds).
    steps: Vec<(String, i64, f64)>,
    running: usize,
}

fn render(f: &Figures) -> prometheus::Result<String> {
    let builds = BuildState::ALL.iter().map(|state| {
        let n = f.builds.iter().find(|(st, _)| st == state.as_str()).map(|(_, n)| *n).unwrap_or(0);
        gauge(&[("state", state.as_str())], n as f64)
    });
    let (waits, wait_sum) = f.queue_wait;
    let families = [
        family("kiln_builds", "Builds by state.", MetricType::GAUGE, builds.collect()),
        family(
            "kiln_build_queue_wait_seconds",
            "Time builds waited Queued before they started.",
            MetricType::SUMMARY,
            vec![summary(&[], waits, wait_sum)],
        ),
        family(
            "kiln_build_step_duration_seconds",
            "Duration of finished build steps.",
            MetricType::SUMMARY,
            f.steps.iter().map(|(step, n, sum)| summary(&[("step", step.as_str())], *n, *sum)).collect(),
        ),
        family("kiln_builds_running", "Builds running in this process.", MetricType::GAUGE, vec![gauge(&[], f.running as f64)]),
    ];
    // The encoder refuses a family without samples (before any step has finished).
    let families: Vec<MetricFamily> = families.into_iter().filter(|f| !f.get_metric().is_empty()).collect();
    TextEncoder::new().encode_to_string(&families)
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn labelled(labels: &[(&str, &str)]) -> Metric {
    Metric::from_label(
        labels
            .iter()
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name(name.to_string());
                pair.set_value(value.to_string());
                pair
            })
            .collect(),
    )
}

fn gauge(labels: &[(&str, &str)], value: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(value);
    let mut m = labelled(labels);
    m.set_gauge(g);
    m
}

fn summary(labels: &[(&str, &str)], count: i64, sum: f64) -> Metric {
    let mut s = Summary::default();
    s.set_sample_count(count.max(0) as u64);
    s.set_sample_sum(sum);
    let mut m = labelled(labels);
    m.set_summary(s);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_prometheus_text_format() {
        let figures = Figures {
            builds: vec![("Queued".into(), 2), ("Succeeded".into(), 7)],
            queue_wait: (7, 12.5),
            steps: vec![("clone".into(), 7, 3.25), ("compile".into(), 6, 90.0)],
            running: 1,
        };
        let text = render(&figures).unwrap();
        let mut expected = String::from("# HELP kiln_builds Builds by state.\n# TYPE kiln_builds gauge\n");
        for state in BuildState::ALL {
            let n = match state.as_str() {
                "Queued" => 2,
                "Succeeded" => 7,
                _ => 0,
            };
            expected.push_str(&format!("kiln_builds{{state=\"{}\"}} {n}\n", state.as_str()));
        }
        expected.push_str(
            "# HELP kiln_build_queue_wait_seconds Time builds waited Queued before they started.\n\
             # TYPE kiln_build_queue_wait_seconds summary\n\
             kiln_build_queue_wait_seconds_sum 12.5\n\
             kiln_build_queue_wait_seconds_count 7\n\
             # HELP kiln_build_step_duration_seconds Duration of finished build steps.\n\
             # TYPE kiln_build_step_duration_seconds summary\n\
             kiln_build_step_duration_seconds_sum{step=\"clone\"} 3.25\n\
             kiln_build_step_duration_seconds_count{step=\"clone\"} 7\n\
             kiln_build_step_duration_seconds_sum{step=\"compile\"} 90\n\
             kiln_build_step_duration_seconds_count{step=\"compile\"} 6\n\
             # HELP kiln_builds_running Builds running in this process.\n\
             # TYPE kiln_builds_running gauge\n\
             kiln_builds_running 1\n",
        );
        assert_eq!(text, expected);
        // Before any step has finished the step summary has no samples, and no header either.
        let fresh = render(&Figures { builds: vec![], queue_wait: (0, 0.0), steps: vec![], running: 0 }).unwrap();
        assert!(fresh.contains("kiln_builds{state=\"Queued\"} 0\n"), "{fresh}");
        assert!(fresh.contains("kiln_build_queue_wait_seconds_count 0\n"), "{fresh}");
        assert!(!fresh.contains("kiln_build_step_duration_seconds"), "{fresh}");
    }
}

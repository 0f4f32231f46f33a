//! `/metrics` as Prometheus reads it: fetched over Kiln's socket, checked line by line as
//! OpenMetrics text, and parsed with the `prometheus-parse` crate into samples a test asks for by
//! name and labels.
//!
//! `prometheus-parse` reads the Prometheus text format. Of the OpenMetrics additions it skips
//! `# EOF` and `# UNIT` (comments to it), and it types only the samples named as their `# TYPE`
//! line (a gauge; a histogram's `_bucket`s): a counter's `_total` and a histogram's `_sum` and
//! `_count` come back untyped, with their values. So [`Scrape::value`] reads any sample by its
//! full name, and [`Scrape::fetch`] checks the rest strictly: every line a `# HELP`, `# TYPE`,
//! or a sample of a declared family with a number, ending with `# EOF`.

use std::time::Duration;

use prometheus_parse::Value;

use crate::support::kiln::TestKiln;

pub struct Scrape {
    pub text: String,
    parsed: prometheus_parse::Scrape,
}

impl Scrape {
    /// GET /metrics (no token) over the socket; panics on a line Prometheus would refuse.
    pub async fn fetch(kiln: &TestKiln) -> Scrape {
        let res = reqwest::get(kiln.url("/metrics")).await.unwrap();
        assert_eq!(res.status(), 200);
        let content_type = res.headers()["content-type"].to_str().unwrap().to_string();
        assert!(content_type.starts_with("application/openmetrics-text; version=1.0.0"), "{content_type}");
        let text = res.text().await.unwrap();
        crate::support::secrets::capture("GET /metrics answer", &text);
        check_openmetrics(&text);
        let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        Scrape { text, parsed }
    }

    /// (name, type) of each family written, from its `# TYPE` line, in order.
    pub fn families(&self) -> Vec<(String, String)> {
        (self.text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split_once(' ')))
            .map(|(name, kind)| (name.to_string(), kind.to_string()))
            .collect()
    }

    /// The value of the sample `name` (its full name: `…_total`, `…_count`) whose labels are
    /// exactly `labels`; `None` when there is no such sample.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self
            .parsed
            .samples
            .iter()
            .filter(|s| s.metric == name && same_labels(&s.labels, labels))
            .map(one_number)
            .collect();
        assert!(found.len() <= 1, "{name}{labels:?} appears {} times:\n{}", found.len(), self.text);
        found.first().copied()
    }

    /// As [`Scrape::value`], 0 when the sample is absent (a label set that never happened).
    pub fn number(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }

    /// The sum of every sample named `name`, whatever its labels.
    pub fn sum(&self, name: &str) -> f64 {
        self.parsed.samples.iter().filter(|s| s.metric == name).map(one_number).sum()
    }

    /// A histogram's observations with these labels, checked against its buckets: the `+Inf`
    /// bucket holds them all and the buckets never decrease. 0 when it has none.
    pub fn histogram_count(&self, family: &str, labels: &[(&str, &str)]) -> f64 {
        let count = self.number(&format!("{family}_count"), labels);
        let buckets: Vec<&prometheus_parse::HistogramCount> = self
            .parsed
            .samples
            .iter()
            .filter(|s| s.metric == family && same_labels(&s.labels, labels))
            .flat_map(|s| match &s.value {
                Value::Histogram(b) => b.iter(),
                other => panic!("{family} is {other:?}, not a histogram"),
            })
            .collect();
        if count > 0.0 {
            let inf = buckets.iter().find(|b| b.less_than == f64::INFINITY).unwrap_or_else(|| panic!("{family}{labels:?}: no +Inf bucket"));
            assert_eq!(inf.count, count, "{family}{labels:?}: +Inf bucket vs _count");
            assert!(buckets.windows(2).all(|w| w[0].less_than < w[1].less_than && w[0].count <= w[1].count), "{family}{labels:?}: {buckets:?}");
        }
        count
    }

    /// The label sets of a family's samples (a histogram's without `le`), for "which steps".
    pub fn label_values(&self, sample: &str, label: &str) -> Vec<String> {
        let mut values: Vec<String> =
            self.parsed.samples.iter().filter(|s| s.metric == sample).filter_map(|s| s.labels.get(label).map(str::to_string)).collect();
        values.sort();
        values.dedup();
        values
    }
}

/// Scrapes until `ready` holds, or panics with the last scrape after `limit`: for the figures
/// that follow the scheduler's pass or a connection's end, without sleeping a fixed time.
pub async fn scrape_until(kiln: &TestKiln, limit: Duration, what: &str, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let scrape = Scrape::fetch(kiln).await;
        if ready(&scrape) {
            return scrape;
        }
        assert!(tokio::time::Instant::now() < deadline, "never {what} within {limit:?}:\n{}", scrape.text);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A counter's, gauge's or untyped sample's value (not a histogram's buckets).
fn one_number(s: &prometheus_parse::Sample) -> f64 {
    match &s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{}{:?} is {other:?}, not one number", s.metric, s.labels),
    }
}

fn same_labels(have: &prometheus_parse::Labels, want: &[(&str, &str)]) -> bool {
    have.len() == want.len() && want.iter().all(|(k, v)| have.get(k) == Some(*v))
}

/// The OpenMetrics text rules the lax parser does not enforce: a family is declared (`# HELP`,
/// `# TYPE`) before its samples, each sample is `name{labels} number` of the family declared last,
/// with a suffix its type allows, and the text ends with `# EOF`.
fn check_openmetrics(text: &str) {
    assert!(text.ends_with("# EOF\n"), "no # EOF at the end:\n{text}");
    let mut families: Vec<(String, String)> = vec![];
    for line in text.lines() {
        if line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("{line}"));
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            families.push((name.to_string(), kind.to_string()));
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment line {line:?}");
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        assert!(value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value), "{line:?}: value");
        let name = series.split('{').next().unwrap();
        assert!(series == name || series.ends_with('}'), "{line:?}: labels");
        // A family's samples follow its `# TYPE` line, before the next family's.
        let (family, kind) = families.last().unwrap_or_else(|| panic!("{line:?}: a sample before any # TYPE"));
        let suffixes: &[&str] = match kind.as_str() {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        assert!(suffixes.iter().any(|s| name == format!("{family}{s}")), "{line:?}: not a sample of {kind} {family}");
    }
}

//! The operator's own metrics, in a registry it owns.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Bounds of the reconcile duration histogram, in seconds: fine around 100 ms, so a
/// percentile read from the buckets says on which side of that target it falls.
pub const DURATION_BUCKETS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Reconcile counts, errors and durations, API requests, and whether this replica leads.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles by `result` (`ok`, `error`).
    pub reconciles: IntCounterVec,
    /// Failed reconciles by `reason` ([`crate::Error::metric_label`]).
    pub errors: IntCounterVec,
    /// Reconcile duration by `result`.
    pub duration: HistogramVec,
    /// Requests to the API server by `verb` and `resource` (see [`api_request`]).
    pub api_requests: IntCounterVec,
    /// Time from sending a request to the API server to its response headers, by `verb`
    /// and `resource`: how long reconciles wait on the server.
    pub api_duration: HistogramVec,
    /// Events dropped because the queue of Events to send was full.
    pub events_dropped: IntCounter,
    /// Time a reconcile waited for a slot (see [`crate::throttle`]).
    pub reconcile_wait: prometheus::Histogram,
    /// Reconciles allowed at once now.
    pub reconcile_limit: IntGauge,
    /// 1 while this replica holds the leader lease.
    pub leader: IntGauge,
}

impl Metrics {
    /// Registers every metric under the `weir_operator_` prefix.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("weir_operator".into()), None)?;
        let reconciles = IntCounterVec::new(Opts::new("reconciles_total", "StreamJob reconciles"), &["result"])?;
        let errors = IntCounterVec::new(Opts::new("reconcile_errors_total", "Failed reconciles"), &["reason"])?;
        let duration = HistogramVec::new(
            HistogramOpts::new("reconcile_duration_seconds", "Time spent in one reconcile")
                .buckets(DURATION_BUCKETS.to_vec()),
            &["result"],
        )?;
        let api_requests = IntCounterVec::new(
            Opts::new("api_requests_total", "Requests sent to the API server"),
            &["verb", "resource"],
        )?;
        let api_duration = HistogramVec::new(
            HistogramOpts::new("api_request_duration_seconds", "Time until the API server answered a request")
                .buckets(DURATION_BUCKETS.to_vec()),
            &["verb", "resource"],
        )?;
        let events_dropped = IntCounter::new("events_dropped_total", "Events not sent because too many were waiting")?;
        let reconcile_wait = prometheus::Histogram::with_opts(
            HistogramOpts::new("reconcile_wait_seconds", "Time a reconcile waited for a slot")
                .buckets(DURATION_BUCKETS.to_vec()),
        )?;
        let reconcile_limit = IntGauge::new("reconcile_limit", "Reconciles allowed at once now")?;
        let leader = IntGauge::new("leader", "1 while this replica holds the leader lease")?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(api_requests.clone()))?;
        registry.register(Box::new(api_duration.clone()))?;
        registry.register(Box::new(events_dropped.clone()))?;
        registry.register(Box::new(reconcile_wait.clone()))?;
        registry.register(Box::new(reconcile_limit.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Self {
            registry,
            reconciles,
            errors,
            duration,
            api_requests,
            api_duration,
            events_dropped,
            reconcile_wait,
            reconcile_limit,
            leader,
        })
    }

    /// Records one reconcile's outcome and duration.
    pub fn observe(&self, result: &str, seconds: f64) {
        self.reconciles.with_label_values(&[result]).inc();
        self.duration.with_label_values(&[result]).observe(seconds);
    }

    /// Counts one request to the API server; returns its verb and the histogram its answer
    /// time goes to.
    pub fn count_request(
        &self,
        method: &str,
        path: &str,
        query: Option<&str>,
    ) -> (&'static str, prometheus::Histogram) {
        let (verb, resource) = api_request(method, path, query);
        self.api_requests.with_label_values(&[verb, &resource]).inc();
        (verb, self.api_duration.with_label_values(&[verb, &resource]))
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on invalid metric families, which registration rules out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// The Kubernetes verb and resource (`plural` or `plural/subresource`) of an API request,
/// from its method and URL, so API traffic can be counted per kind of call.
pub fn api_request(method: &str, path: &str, query: Option<&str>) -> (&'static str, String) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    // `/api/v1/...` or `/apis/<group>/<version>/...`.
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..),
        Some(&"apis") => segments.get(3..),
        _ => None,
    }
    .unwrap_or_default();
    let rest = match rest {
        ["namespaces", _, _, ..] => &rest[2..],
        _ => rest,
    };
    let resource = match rest {
        [] => "other".to_owned(),
        [plural] | [plural, _] => (*plural).to_owned(),
        [plural, _, sub, ..] => format!("{plural}/{sub}"),
    };
    let named = rest.len() >= 2;
    let watch = query.is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let verb = match method {
        "GET" if watch => "watch",
        "GET" if named => "get",
        "GET" => "list",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" if named => "delete",
        "DELETE" => "deletecollection",
        _ => "other",
    };
    (verb, resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(method: &str, path: &str, query: Option<&str>) -> (&'static str, String) {
        api_request(method, path, query)
    }

    #[test]
    fn requests_are_named_by_verb_and_resource() {
        assert_eq!(call("GET", "/apis/apps/v1/namespaces/a/deployments/j", None), ("get", "deployments".into()));
        assert_eq!(call("GET", "/api/v1/namespaces/a/pods", Some("labelSelector=x")), ("list", "pods".into()));
        assert_eq!(call("GET", "/api/v1/pods", Some("watch=true&labelSelector=x")), ("watch", "pods".into()));
        assert_eq!(
            call("PATCH", "/apis/weir.dev/v1alpha1/namespaces/a/streamjobs/j/status", Some("fieldManager=w")),
            ("patch", "streamjobs/status".into())
        );
        assert_eq!(call("POST", "/apis/events.k8s.io/v1/namespaces/a/events", None), ("create", "events".into()));
        assert_eq!(
            call("DELETE", "/apis/keda.sh/v1alpha1/namespaces/a/scaledobjects/j", None),
            ("delete", "scaledobjects".into())
        );
        assert_eq!(call("GET", "/api/v1/namespaces/a", None), ("get", "namespaces".into()));
        assert_eq!(call("GET", "/version", None), ("list", "other".into()));
    }
}

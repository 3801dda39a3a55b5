//! The operator's API client: every request is counted and timed in the operator's metrics,
//! so its API traffic, and how long reconciles wait on the server, can be measured; the
//! answer times also lead the [`Throttle`] of reconciles.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use kube::Client;
use tower::{Layer, Service};

use crate::{metrics::Metrics, throttle::Throttle};

/// A client from the usual kubeconfig or in-cluster settings, measured in `metrics` and
/// telling `throttle` how fast the server answers.
pub async fn measured_client(metrics: Arc<Metrics>, throttle: Arc<Throttle>) -> Result<Client, kube::Error> {
    let config = kube::Config::infer().await.map_err(kube::Error::InferConfig)?;
    Ok(kube::client::ClientBuilder::try_from(config)?.with_layer(&Measure { metrics, throttle }).build())
}

/// Counts each request in `weir_operator_api_requests_total`, times its answer in
/// `weir_operator_api_request_duration_seconds`, and tells the throttle (watches aside:
/// they answer when something changes).
#[derive(Clone, Debug)]
pub struct Measure {
    metrics: Arc<Metrics>,
    throttle: Arc<Throttle>,
}

impl<S> Layer<S> for Measure {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Measured<S> {
        Measured { inner, metrics: self.metrics.clone(), throttle: self.throttle.clone() }
    }
}

/// A service measured by [`Measure`].
#[derive(Clone, Debug)]
pub struct Measured<S> {
    inner: S,
    metrics: Arc<Metrics>,
    throttle: Arc<Throttle>,
}

impl<S, B> Service<http::Request<B>> for Measured<S>
where
    S: Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let uri = request.uri();
        let (verb, answered) = self.metrics.count_request(request.method().as_str(), uri.path(), uri.query());
        let throttle = (verb != "watch").then(|| self.throttle.clone());
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            let took = started.elapsed();
            answered.observe(took.as_secs_f64());
            if let Some(throttle) = throttle {
                throttle.answered(took);
            }
            response
        })
    }
}

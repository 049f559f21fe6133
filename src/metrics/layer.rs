//! The tower layer that records `kmf_rpc_requests_total{method,code}` and
//! `kmf_rpc_duration_seconds{method}` for every call the gRPC server answers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http;
use tower::{Layer, Service};

use super::{Metrics, code_name};

/// Wraps the gRPC routes; see `RpcMetricsService`.
#[derive(Clone, Debug)]
pub struct RpcMetricsLayer {
    metrics: Arc<Metrics>,
}

impl RpcMetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        RpcMetricsLayer { metrics }
    }
}

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService { inner, metrics: Arc::clone(&self.metrics) }
    }
}

/// Records each call when its response headers are ready.
///
/// The status code is an approximation that is exact for unary calls: tonic
/// answers a failed unary call "trailers-only", with `grpc-status` in the
/// response headers, and a successful one with headers that carry no
/// `grpc-status` (it follows in the trailers). So a response without
/// `grpc-status` in its headers is counted as OK. For streaming calls (health
/// watch, reflection) an error after the first message is not seen here, and
/// the duration is the time to the response headers, not to the stream's end.
#[derive(Clone, Debug)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, R> Service<http::Request<B>> for RpcMetricsService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let started = Instant::now();
        let metrics = Arc::clone(&self.metrics);
        let answer = self.inner.call(req);
        Box::pin(async move {
            let result = answer.await;
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or("OK", code_name),
                // The transport failed before any status was produced.
                Err(_) => "UNKNOWN",
            };
            // Unknown paths are answered UNIMPLEMENTED; they share one label
            // so that a client cannot grow the series without bound.
            let method = if code == "UNIMPLEMENTED" { "unknown" } else { path.as_str() };
            metrics.observe(method, code, started.elapsed());
            result
        })
    }
}

//! One span, one log line and one metric observation per call.
//!
//! The span carries the method, a request id (the caller's `x-request-id`
//! when it sends a usable one, else a fresh UUID, and returned in the
//! response's `x-request-id`), the customer id once a handler knows it, the
//! status code and the duration. Nothing from the request body.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::Code;
use tonic::codegen::http;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::metrics::Metrics;

/// Header that carries the request id both ways.
const REQUEST_ID: &str = "x-request-id";
/// Longest caller-chosen request id kept; longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Wraps every call of the server in [`Observe`].
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
}

impl ObserveLayer {
    /// Observes calls into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`ObserveLayer`] makes.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, R> Service<http::Request<B>> for Observe<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (service, method) = split_path(request.uri().path());
        let request_id = request
            .headers()
            .get(REQUEST_ID)
            .filter(|v| !v.is_empty() && v.len() <= MAX_REQUEST_ID_LEN)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let span = tracing::info_span!(
            "rpc",
            method = %method,
            request_id = %request_id,
            customer_id = tracing::field::Empty,
            code = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        let started = Instant::now();
        // The clone that was driven to readiness serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = self.metrics.clone();

        Box::pin(async move {
            let mut result = inner.call(request).instrument(span.clone()).await;
            let elapsed = started.elapsed();
            let code = match &mut result {
                Ok(response) => {
                    if let Ok(value) = http::HeaderValue::from_str(&request_id) {
                        response.headers_mut().insert(REQUEST_ID, value);
                    }
                    status_code(response)
                }
                Err(_) => Code::Unknown,
            };
            metrics.observe_call(&service, &method, code, elapsed);
            span.record("code", tracing::field::debug(code));
            span.record("duration_ms", elapsed.as_secs_f64() * 1000.0);
            span.in_scope(|| match code {
                Code::Internal | Code::Unknown | Code::DataLoss => tracing::error!("call failed"),
                Code::Unavailable | Code::ResourceExhausted => tracing::warn!("call refused"),
                _ => tracing::debug!("call finished"),
            });
            result
        })
    }
}

/// `/customers.v1.CustomerService/CreateCustomer` into its two parts.
fn split_path(path: &str) -> (String, String) {
    let trimmed = path.trim_start_matches('/');
    match trimmed.split_once('/') {
        Some((service, method)) => (service.to_owned(), method.to_owned()),
        None => (trimmed.to_owned(), String::new()),
    }
}

/// The status of a unary reply: in the headers when the call failed before
/// any message (trailers-only), else OK, which a unary reply with a message
/// carries in its trailers.
fn status_code<R>(response: &http::Response<R>) -> Code {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from)
        .unwrap_or(Code::Ok)
}

/// Records the customer a call is about on the call's span.
pub fn record_customer(id: &str) {
    tracing::Span::current().record("customer_id", id);
}

//! One span, one log line and one metric observation per call.
//!
//! The span carries the method, a request id (the caller's `x-request-id`
//! when it sends a usable one, else a fresh UUID, and returned in the
//! response's `x-request-id`), the customer id once a handler knows it, the
//! status code and the duration. Nothing from the request body.
//!
//! A call whose caller broke off before its request had arrived (reset the
//! stream or dropped the connection) is recorded as CANCELLED and logged at
//! debug level: whatever status tonic then makes up for the torn request
//! (UNKNOWN for a lost connection) is never seen by anyone, and it is not
//! the service's failure. Such a call did nothing: tonic runs a unary
//! handler only after the request body has ended without error.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    S: Service<http::Request<Watched<B>>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Unpin + Send + 'static,
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
        let broke_off = Arc::new(AtomicBool::new(false));
        let request = request.map(|body| Watched {
            body,
            broke_off: broke_off.clone(),
        });

        Box::pin(async move {
            let mut result = inner.call(request).instrument(span.clone()).await;
            let elapsed = started.elapsed();
            let code = match &mut result {
                _ if broke_off.load(Ordering::Relaxed) => Code::Cancelled,
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
                Code::Cancelled => tracing::debug!("caller broke off the call"),
                _ => tracing::debug!("call finished"),
            });
            result
        })
    }
}

/// A request body that notes whether reading it failed, which on a server
/// means the caller's side of the stream broke off.
#[derive(Debug)]
pub struct Watched<B> {
    body: B,
    broke_off: Arc<AtomicBool>,
}

impl<B: http_body::Body + Unpin> http_body::Body for Watched<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            self.broke_off.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
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

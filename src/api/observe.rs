//! One span, one log line and one metric observation per call.
//!
//! The span carries the method, a request id (the caller's `x-request-id`
//! when it sends a usable one, else a fresh UUID, and returned in the
//! response's `x-request-id`), the customer id once a handler knows it, the
//! status code and the duration. Nothing from the request body.
//!
//! Calls that end without a status of their own are recorded too:
//! - A call whose caller broke off before its request had arrived (reset
//!   the stream or dropped the connection) is CANCELLED, logged at debug:
//!   whatever status tonic then makes up for the torn request (UNKNOWN for
//!   a lost connection) is seen by no one, and it is not the service's
//!   failure. Such a call did nothing: tonic runs a unary handler only
//!   after the request body has ended without error.
//! - A call dropped while its handler runs is CANCELLED when its caller
//!   went away, DEADLINE_EXCEEDED when its `grpc-timeout` had passed
//!   (tonic then answers CANCELLED), both at debug.
//! - A handler that panics answers INTERNAL (rather than a reset stream)
//!   and is logged at error.

use std::collections::HashSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::Code;
use tonic::codegen::http;
use tower::{Layer, Service};
use tracing::Instrument;

use super::error;
use crate::metrics::Metrics;

/// Header that carries the request id both ways.
const REQUEST_ID: &str = "x-request-id";
/// Longest caller-chosen request id kept; longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The metric labels of calls to paths the server does not serve. Callers
/// choose paths freely, so labelling each would let anyone, without a key,
/// grow the metrics (and the server's memory) without limit.
const UNKNOWN: &str = "unknown";

/// Wraps every call of the server in [`Observe`].
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
    served: Arc<HashSet<String>>,
}

impl ObserveLayer {
    /// Observes calls into `metrics`, labelled by service and method when
    /// their path (`/package.Service/Method`) is one of `served`.
    pub fn new(metrics: Arc<Metrics>, served: impl IntoIterator<Item = String>) -> Self {
        Self {
            metrics,
            served: Arc::new(served.into_iter().collect()),
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            metrics: self.metrics.clone(),
            served: self.served.clone(),
        }
    }
}

/// The service [`ObserveLayer`] makes.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
    served: Arc<HashSet<String>>,
}

impl<S, B, R> Service<http::Request<B>> for Observe<S>
where
    S: Service<http::Request<Watched<B>>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Unpin + Send + 'static,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let (service, method) = split_path(path);
        let labels = if self.served.contains(path) {
            (service, method.clone())
        } else {
            (UNKNOWN.to_owned(), UNKNOWN.to_owned())
        };
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
        let mut call = Call {
            labels,
            span: span.clone(),
            metrics: self.metrics.clone(),
            started: Instant::now(),
            deadline: request.headers().get(GRPC_TIMEOUT).and_then(grpc_timeout),
            broke_off: Arc::new(AtomicBool::new(false)),
            finished: false,
        };
        let request = request.map(|body| Watched {
            body,
            broke_off: call.broke_off.clone(),
        });
        // The clone that was driven to readiness serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);

        Box::pin(async move {
            let served = std::pin::pin!(inner.call(request));
            let mut result = match CatchPanic(served).instrument(span).await {
                Ok(result) => result,
                Err(()) => {
                    call.span.in_scope(|| tracing::error!("handler panicked"));
                    Ok(error::status(Code::Internal, "internal error", "INTERNAL").into_http())
                }
            };
            let code = match &mut result {
                _ if call.broke_off.load(Ordering::Relaxed) => Code::Cancelled,
                Ok(response) => {
                    if let Ok(value) = http::HeaderValue::from_str(&request_id) {
                        response.headers_mut().insert(REQUEST_ID, value);
                    }
                    status_code(response)
                }
                Err(_) => Code::Unknown,
            };
            call.finish(code);
            result
        })
    }
}

/// One call being observed. Records its outcome once: when it finishes, or
/// when its future is dropped unfinished, which happens when the caller
/// resets the stream or closes the connection while the handler runs, and
/// when tonic ends the call at its `grpc-timeout`.
struct Call {
    /// Service and method, or [`UNKNOWN`] for both.
    labels: (String, String),
    span: tracing::Span,
    metrics: Arc<Metrics>,
    started: Instant,
    /// The caller's deadline, from `grpc-timeout`.
    deadline: Option<Duration>,
    /// Set by [`Watched`] when reading the request failed.
    broke_off: Arc<AtomicBool>,
    finished: bool,
}

impl Call {
    fn finish(&mut self, code: Code) {
        self.finished = true;
        let elapsed = self.started.elapsed();
        self.metrics
            .observe_call(&self.labels.0, &self.labels.1, code, elapsed);
        self.span.record("code", tracing::field::debug(code));
        self.span
            .record("duration_ms", elapsed.as_secs_f64() * 1000.0);
        self.span.in_scope(|| match code {
            Code::Internal | Code::Unknown | Code::DataLoss => tracing::error!("call failed"),
            Code::Unavailable | Code::ResourceExhausted => tracing::warn!("call refused"),
            Code::Cancelled => tracing::debug!("caller broke off the call"),
            Code::DeadlineExceeded => tracing::debug!("call ran out of time"),
            _ => tracing::debug!("call finished"),
        });
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // tonic's timer starts a moment before this call's clock, and
        // fires no earlier than the deadline.
        let timed_out = self
            .deadline
            .is_some_and(|deadline| self.started.elapsed() + DEADLINE_SLACK >= deadline);
        self.finish(if timed_out {
            Code::DeadlineExceeded
        } else {
            Code::Cancelled
        });
    }
}

/// How far short of its deadline a dropped call still counts as timed out.
const DEADLINE_SLACK: Duration = Duration::from_millis(1);

/// Header that carries the caller's deadline.
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// A `grpc-timeout` value: at most 8 digits and a unit (hours, minutes,
/// seconds, milli-, micro-, nanoseconds). None when malformed.
fn grpc_timeout(value: &http::HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    let (digits, unit) = text.split_at_checked(text.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Its future, with a panic while polling it turned into `Err(())`, so that
/// the caller gets INTERNAL rather than a reset stream, and the call is
/// logged and counted. The handler's state is dropped with the panic.
struct CatchPanic<F>(F);

impl<F: Future + Unpin> Future for CatchPanic<F> {
    type Output = Result<F::Output, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    fn metrics() -> Arc<Metrics> {
        // Never connects: nothing here reads the pool.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://127.0.0.1:1/none")
            .unwrap();
        Metrics::new(pool, 1, false)
    }

    fn call(path: &str) -> http::Request<tonic::body::Body> {
        http::Request::post(path)
            .body(tonic::body::Body::default())
            .unwrap()
    }

    #[tokio::test]
    async fn a_handler_that_panics_answers_internal_and_is_counted() {
        let metrics = metrics();
        let panics = tower::service_fn(|_: http::Request<Watched<tonic::body::Body>>| async {
            if std::hint::black_box(true) {
                panic!("a bug in a handler");
            }
            Ok::<_, Infallible>(http::Response::new(tonic::body::Body::default()))
        });
        let served = ["/customers.v1.CustomerService/GetCustomer".to_owned()];
        let mut service = ObserveLayer::new(metrics.clone(), served).layer(panics);

        let response = service
            .call(call("/customers.v1.CustomerService/GetCustomer"))
            .await
            .unwrap();

        assert_eq!(response.headers()["grpc-status"], "13");
        assert!(response.headers().contains_key("grpc-status-details-bin"));
        assert!(response.headers().contains_key(REQUEST_ID));
        assert!(
            metrics.render().contains(
                "customers_grpc_calls_total{grpc_service=\"customers.v1.CustomerService\",\
                 grpc_method=\"GetCustomer\",grpc_code=\"Internal\"} 1"
            ),
            "{}",
            metrics.render()
        );
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_nothing_else_does() {
        let parse =
            |text: &str| grpc_timeout(&http::HeaderValue::from_bytes(text.as_bytes()).unwrap());
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("4S"), Some(Duration::from_secs(4)));
        assert_eq!(parse("300m"), Some(Duration::from_millis(300)));
        assert_eq!(parse("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse("5n"), Some(Duration::from_nanos(5)));
        for bad in [
            "",
            "m",
            "100",
            "100x",
            "-1S",
            "+1S",
            "123456789m",
            "1.5S",
            "1 S",
            "éS",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn paths_not_served_share_one_label() {
        let metrics = metrics();
        let answers = tower::service_fn(|_: http::Request<Watched<tonic::body::Body>>| async {
            Ok::<_, Infallible>(http::Response::new(tonic::body::Body::default()))
        });
        let served = ["/customers.v1.CustomerService/GetCustomer".to_owned()];
        let mut service = ObserveLayer::new(metrics.clone(), served).layer(answers);

        for path in [
            "/customers.v1.CustomerService/GetCustomer",
            "/customers.v1.CustomerService/Made",
            "/made.Up/Method",
            "/x",
        ] {
            service.call(call(path)).await.unwrap();
        }

        let rendered = metrics.render();
        let mut calls: Vec<&str> = rendered
            .lines()
            .filter(|l| l.starts_with("customers_grpc_calls_total"))
            .collect();
        calls.sort();
        assert_eq!(
            calls,
            [
                "customers_grpc_calls_total{grpc_service=\"customers.v1.CustomerService\",\
                 grpc_method=\"GetCustomer\",grpc_code=\"Ok\"} 1",
                "customers_grpc_calls_total{grpc_service=\"unknown\",grpc_method=\"unknown\",\
                 grpc_code=\"Ok\"} 3",
            ]
        );
    }
}

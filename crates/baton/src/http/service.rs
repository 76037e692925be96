//! The per-request wrapper: counts the request on its connection, adds
//! `Connection: close` to HTTP/1 responses written while draining, and marks the end of
//! the response when its body is done.
//!
//! Per request it costs two uncontended atomic increments on the connection's own
//! counters, one relaxed load of the phase, one `Arc` clone, and a decrement when the
//! body ends: no lock, no allocation.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::header::{CONNECTION, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::service::TowerToHyperService;
use pin_project_lite::pin_project;

use crate::tracker::ConnShared;

#[derive(Debug)]
pub(crate) struct DrainService<S> {
    inner: TowerToHyperService<S>,
    conn: Arc<ConnShared>,
}

impl<S> DrainService<S> {
    pub(crate) fn new(service: S, conn: Arc<ConnShared>) -> Self {
        DrainService {
            inner: TowerToHyperService::new(service),
            conn,
        }
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for DrainService<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future =
        DrainFuture<<TowerToHyperService<S> as hyper::service::Service<Request<Incoming>>>::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let http1 = req.version() < Version::HTTP_2;
        self.conn.request_started(!http1);
        DrainFuture {
            inner: self.inner.call(req),
            guard: Some(InFlight(Arc::clone(&self.conn))),
            http1,
        }
    }
}

/// Marks a request finished when dropped: with the response body once it is done, or
/// with the future if the handler fails or is cancelled.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<ConnShared>);

impl Drop for InFlight {
    #[inline]
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

pin_project! {
    #[derive(Debug)]
    pub(crate) struct DrainFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InFlight>,
        http1: bool,
    }
}

impl<F, B, E> Future for DrainFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        // Decided when the response is ready, not when the request came: a request that
        // arrived before the drain and is answered during it must close too, or its
        // client sends the next request on a connection that is about to close.
        if *this.http1
            && this.guard.as_ref().is_some_and(|g| g.0.closes_responses())
            && response.status() != StatusCode::SWITCHING_PROTOCOLS
        {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        let guard = this.guard.take();
        Poll::Ready(Ok(response.map(|body| TrackedBody {
            inner: body,
            _guard: guard,
        })))
    }
}

pin_project! {
    /// A response body that tells baton when the response is complete.
    #[derive(Debug)]
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        _guard: Option<InFlight>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::{Phase, Tracker};

    fn respond(
        tracker: &Tracker,
        http1: bool,
        status: StatusCode,
    ) -> (Response<TrackedBody<&'static str>>, Arc<ConnShared>) {
        let conn = Arc::clone(tracker.register(-1).shared());
        conn.request_started(!http1);
        let fut = DrainFuture {
            inner: std::future::ready(Ok::<_, std::convert::Infallible>(
                Response::builder().status(status).body("x").unwrap(),
            )),
            guard: Some(InFlight(Arc::clone(&conn))),
            http1,
        };
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut fut = std::pin::pin!(fut);
        let Poll::Ready(Ok(resp)) = fut.as_mut().poll(&mut cx) else {
            panic!("a ready inner future gives a ready response")
        };
        (resp, conn)
    }

    #[test]
    fn connection_close_only_on_http1_responses_while_draining() {
        let tracker = Tracker::new();
        for phase in [Phase::Running, Phase::DelayingDrain] {
            tracker.advance(phase);
            let (resp, _) = respond(&tracker, true, StatusCode::OK);
            assert!(resp.headers().get(CONNECTION).is_none(), "{phase:?}");
        }
        tracker.advance(Phase::Draining);
        let (resp, _) = respond(&tracker, true, StatusCode::OK);
        assert_eq!(resp.headers()[CONNECTION], "close");
        let (resp, _) = respond(&tracker, false, StatusCode::OK);
        assert!(
            resp.headers().get(CONNECTION).is_none(),
            "connection headers are illegal in HTTP/2"
        );
        let (resp, _) = respond(&tracker, true, StatusCode::SWITCHING_PROTOCOLS);
        assert!(
            resp.headers().get(CONNECTION).is_none(),
            "an upgrade response keeps its Connection: upgrade"
        );
    }

    /// Regression (found by `baton-bench --mode idle`): a keep-alive request answered
    /// between a restart signal and the drain got no `Connection: close`; its idle
    /// connection was then closed at the end of the idle grace, under the client.
    #[test]
    fn connection_close_while_a_restart_starts_the_next_generation() {
        let tracker = Tracker::new();
        tracker.set_closing(true);
        let (resp, _) = respond(&tracker, true, StatusCode::OK);
        assert_eq!(resp.headers()[CONNECTION], "close");
        tracker.set_closing(false); // the restart failed: keep-alive as usual again
        let (resp, _) = respond(&tracker, true, StatusCode::OK);
        assert!(resp.headers().get(CONNECTION).is_none());
        tracker.set_closing(true);
        tracker.advance(Phase::Draining);
        tracker.set_closing(false); // too late: draining
        let (resp, _) = respond(&tracker, true, StatusCode::OK);
        assert_eq!(resp.headers()[CONNECTION], "close");
    }

    #[test]
    fn the_request_is_in_flight_until_its_body_is_dropped() {
        let tracker = Tracker::new();
        let (resp, conn) = respond(&tracker, true, StatusCode::OK);
        assert_eq!(conn.activity().requests, 1);
        assert!(conn.activity().in_flight);
        drop(resp);
        assert!(!conn.activity().in_flight);
    }
}

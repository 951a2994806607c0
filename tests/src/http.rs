//! A minimal HTTP/1.1 server on 127.0.0.1 port 0 for the fakes.

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub type Reply = Response<Full<Bytes>>;

pub fn reply(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    Response::builder()
        .status(status)
        .body(Full::new(body.into()))
        .expect("valid response")
}

/// Serves `handler` on a fresh loopback port until the process ends.
pub async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    serve_gated(handler, Arc::new(AtomicBool::new(true))).await
}

/// `serve`, but while `open` is false every connection is closed
/// unanswered (new ones at once, kept-alive ones at their next request): to the client, a service that is not there (a
/// dispatch failure, as with nothing listening).
pub async fn serve_gated<F, Fut>(handler: F, open: Arc<AtomicBool>) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            if !open.load(Ordering::SeqCst) {
                drop(stream);
                continue;
            }
            let handler = handler.clone();
            let open = open.clone();
            tokio::spawn(async move {
                // Kept-alive connections too: a request on one while closed
                // is an error to hyper, which drops the connection unanswered.
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    let open = open.load(Ordering::SeqCst);
                    async move {
                        match open {
                            true => Ok(handler(req).await),
                            false => Err(std::io::Error::other("service down")),
                        }
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

//! The app behind every scenario: an HTTP/1.1 echo server.
//!
//! It runs as a separate process (the bench re-executes itself with the
//! hidden `echo-server` subcommand) so the app's CPU and memory never mix
//! with the load generator's or the proxies' numbers.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::load;
use crate::procs::ChildGuard;

/// Serves until stdin reaches EOF.
///
/// The bench holds the write end of our stdin, so EOF means the bench has
/// gone, even if it was SIGKILLed and never got to stop us.
pub async fn serve(port: u16) -> Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("echo app: binding 127.0.0.1:{port}"))?;
    tokio::select! {
        res = accept_loop(listener) => res,
        () = parent_gone() => Ok(()),
    }
}

async fn accept_loop(listener: TcpListener) -> Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        // Small request/response pairs: without NODELAY, Nagle plus delayed
        // ACKs can add tens of milliseconds to some responses.
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            // Errors here are clients hanging up; nothing to report.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service_fn(echo))
                .await;
        });
    }
}

pub(crate) async fn parent_gone() {
    // Blocking read on a blocking-pool thread: the workspace's tokio has no
    // `io-std` feature, and this is one idle read for the whole process.
    let _ = tokio::task::spawn_blocking(|| {
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
    })
    .await;
}

/// 200 with the request body and content type sent back unchanged.
async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let content_type = req.headers().get(CONTENT_TYPE).cloned();
    let body = req.into_body().collect().await?.to_bytes();
    let mut resp = Response::new(Full::new(body));
    if let Some(ct) = content_type {
        resp.headers_mut().insert(CONTENT_TYPE, ct);
    }
    Ok(resp)
}

/// Starts the echo app on `port` and waits until it answers.
pub async fn spawn(port: u16) -> Result<ChildGuard> {
    let exe = std::env::current_exe().context("locating the bench executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(["echo-server", "--port", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    let guard = ChildGuard::spawn("echo app", &mut cmd, None::<&Path>)?;
    load::wait_for_status(port, "GET", "/", 200, Duration::from_secs(5))
        .await
        .context("echo app did not become ready")?;
    Ok(guard)
}

//! A minimal HTTP/1.1 client for tests: one request, whole response; plus streaming
//! helpers that send or receive large bodies without holding them in memory.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one request and reads the whole response. Panics on transport errors: in a test
/// those are failures.
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> HttpResponse {
    try_request(method, url, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {url} failed: {e}"))
}

/// Like [`request`], but transport errors are returned.
pub async fn try_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<HttpResponse, String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?)
        .uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(body.into()))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(HttpResponse {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// Sends a generated body of `total` bytes in `chunk`-sized frames with no declared length
/// (so it goes out with `Transfer-Encoding: chunked`), and reads the whole response.
/// Transport errors are returned: a server may cut an over-long upload short.
pub async fn send_chunked(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    total: u64,
    chunk: usize,
) -> Result<HttpResponse, String> {
    let client: Client<_, StreamBody<_>> = Client::builder(TokioExecutor::new()).build_http();
    let block = Bytes::from(vec![b'u'; chunk.max(1)]);
    let size = block.len() as u64;
    // A lazy iterator: frames are made as hyper asks for them, all slices of one block.
    let frames = futures_util::stream::iter((0..total.div_ceil(size)).map(move |i| {
        let n = (total - i * size).min(size) as usize;
        Ok::<_, Infallible>(Frame::data(block.slice(..n)))
    }));
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?)
        .uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(StreamBody::new(frames))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(HttpResponse {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// What [`download`] saw: the status, the headers, and how many body bytes arrived.
#[derive(Debug, Clone)]
pub struct Downloaded {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub bytes: u64,
}

/// `GET url`, counting the response body's bytes as they stream in without keeping them.
pub async fn download(url: &str) -> Result<Downloaded, String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::get(url)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let (parts, mut body) = resp.into_parts();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body failed after {bytes} bytes: {e:?}"))?;
        if let Some(data) = frame.data_ref() {
            bytes += data.len() as u64;
        }
    }
    Ok(Downloaded {
        status: parts.status,
        headers: parts.headers,
        bytes,
    })
}

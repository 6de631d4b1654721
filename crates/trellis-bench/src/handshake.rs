//! `trellis-bench handshake`: what opening a new sidecar-to-sidecar connection costs with
//! mTLS, against a plain TCP connect, on loopback: `--count` sequential connections, each a
//! TCP connect (plain) or a connect plus the TLS 1.3 handshake with client certificates and
//! the SPIFFE id check both ends make (mTLS), timed from the connect call until the
//! connection is usable. Connections between sidecars are pooled, so this is paid once per
//! peer, not per request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use trellis_mtls::rustls::pki_types::ServerName;
use trellis_mtls::{
    Authority, CertSettings, SpiffeId, TlsAcceptor, TlsConnector, WorkloadIdentity, tls,
};

#[derive(Args)]
pub struct HandshakeArgs {
    /// Connections to open for each kind.
    #[arg(long, default_value_t = 500)]
    count: usize,
}

pub async fn run(args: HandshakeArgs) -> Result<()> {
    let authority = Arc::new(Authority::create("public")?);
    let identity = |app: &str| {
        WorkloadIdentity::new(
            SpiffeId::new("public", "default", app),
            authority.clone(),
            CertSettings::default(),
        )
    };
    let (server, client) = (identity("server")?, identity("client")?);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(tls::server_config(&server)?);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A byte decides: `t` is a TLS client, `p` a plain one (answered at once).
                let mut kind = [0u8; 1];
                if stream.peek(&mut kind).await.is_err() {
                    return;
                }
                if kind[0] == b'p' {
                    let mut stream = stream;
                    let _ = stream.read_exact(&mut kind).await;
                    let _ = stream.write_all(b"k").await;
                    return;
                }
                if let Ok(mut tls) = acceptor.accept(stream).await
                    && tls::peer_id(tls.get_ref().1.peer_certificates()).is_ok()
                {
                    let mut b = [0u8; 1];
                    if tls.read_exact(&mut b).await.is_ok() {
                        let _ = tls.write_all(b"k").await;
                    }
                }
            });
        }
    });
    let connector = TlsConnector::from(tls::client_config(&client)?);
    let mut plain = Vec::with_capacity(args.count);
    let mut mtls = Vec::with_capacity(args.count);
    for _ in 0..args.count {
        let started = Instant::now();
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.write_all(b"p").await?;
        let mut b = [0u8; 1];
        tcp.read_exact(&mut b).await?;
        plain.push(started.elapsed());

        let started = Instant::now();
        let tcp = TcpStream::connect(addr).await?;
        let mut stream = connector
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .context("tls handshake")?;
        tls::peer_id(stream.get_ref().1.peer_certificates())?;
        stream.write_all(b"t").await?;
        stream.read_exact(&mut b).await?;
        mtls.push(started.elapsed());
    }
    let row = |name: &str, mut v: Vec<Duration>| {
        v.sort();
        let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
        format!(
            "| {name} | {} | {:.3} | {:.3} | {:.3} |\n",
            v.len(),
            at(0.5),
            at(0.9),
            at(0.99)
        )
    };
    let mut md = String::from("# Trellis benchmark: opening a sidecar connection\n\n");
    md.push_str("Sequential connections on 127.0.0.1, one round trip of one byte each; ms.\n\n");
    md.push_str("| connection | count | p50 | p90 | p99 |\n|---|---:|---:|---:|---:|\n");
    md.push_str(&row("plain TCP", plain));
    md.push_str(&row(
        "mTLS (TLS 1.3, client certificate, SPIFFE check)",
        mtls,
    ));
    println!("{md}");
    Ok(())
}

//! TLS helpers for the tests: a test CA that signs certificates for 127.0.0.1, a
//! verifying rustls client, and HTTPS client loops.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A test certificate authority and the leaf certificates it signs for 127.0.0.1.
pub struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    der: CertificateDer<'static>,
}

impl Ca {
    pub fn new() -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "baton test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            der: cert.der().clone(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Writes a certificate for 127.0.0.1 named `cn` and its key into `dir`; returns
    /// the paths and the certificate's DER (to recognise it in a handshake).
    pub fn leaf(&self, dir: &Path, cn: &str, expired: bool) -> (PathBuf, PathBuf, Vec<u8>) {
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (dir.join(format!("{cn}.crt")), dir.join(format!("{cn}.key")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path, cert.der().to_vec())
    }

    pub fn client(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

/// Installs certificate `cn` as `server.crt`/`server.key` (what the demo is told to
/// read), as a renewal would: new files renamed over the old ones.
pub fn install(dir: &Path, files: &(PathBuf, PathBuf, Vec<u8>)) {
    for (from, to) in [(&files.0, "server.crt"), (&files.1, "server.key")] {
        let tmp = dir.join(format!("{to}.new"));
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join(to)).unwrap();
    }
}

/// One TLS connection: the handshake, then the negotiated protocol and the
/// certificate the server presented.
pub async fn connect(
    tls: &TlsConnector,
    addr: &str,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, bool, Vec<u8>), BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1")?.to_owned();
    let stream = tls.connect(name, tcp).await?;
    let (_, conn) = stream.get_ref();
    let h2 = conn.alpn_protocol() == Some(b"h2");
    let cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    Ok((stream, h2, cert))
}

/// `GET path` on a new TLS connection (HTTP/2 if negotiated): status, body, whether h2
/// was used, and the server's certificate.
pub async fn tls_get(
    tls: &TlsConnector,
    addr: &str,
    path: &str,
) -> Result<(u16, String, bool, Vec<u8>), BoxError> {
    let (stream, h2, cert) = connect(tls, addr).await?;
    let io = TokioIo::new(stream);
    let req = Request::get(path)
        .header("host", "127.0.0.1")
        .body(Empty::<Bytes>::new())?;
    let resp = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        send.send_request(req).await?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        send.send_request(req).await?
    };
    let status = resp.status().as_u16();
    let body = String::from_utf8(resp.into_body().collect().await?.to_bytes().to_vec())?;
    Ok((status, body, h2, cert))
}

/// Clients looping over HTTPS until stopped: `keep_alive` reuses an HTTP/1.1
/// connection until the server says `Connection: close`; otherwise each request has
/// its own connection (and its own handshake; HTTP/2 when `h2`). Nothing is retried.
pub struct TlsLoad {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(u64, Vec<String>)>>,
}

impl TlsLoad {
    pub fn start(tls: &TlsConnector, addr: &str, n: usize, keep_alive: bool) -> TlsLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..n)
            .map(|_| {
                let (tls, addr, stop) = (tls.clone(), addr.to_owned(), Arc::clone(&stop));
                tokio::spawn(async move {
                    let (mut ok, mut failures) = (0u64, Vec::new());
                    let mut conn: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> =
                        None;
                    let started = Instant::now();
                    while !stop.load(Ordering::Relaxed)
                        && started.elapsed() < 4 * crate::support::WAIT
                    {
                        let res: Result<bool, BoxError> =
                            tokio::time::timeout(Duration::from_secs(10), async {
                                if !keep_alive {
                                    let (status, _, _, _) = tls_get(&tls, &addr, "/pid").await?;
                                    return Ok(status == 200);
                                }
                                if conn.is_none() {
                                    let (stream, _, _) = connect(&tls, &addr).await?;
                                    let (send, c) =
                                        hyper::client::conn::http1::handshake(TokioIo::new(stream))
                                            .await?;
                                    tokio::spawn(c);
                                    conn = Some(send);
                                }
                                let send = conn.as_mut().unwrap();
                                let req = Request::get("/pid")
                                    .header("host", "127.0.0.1")
                                    .body(Empty::new())?;
                                let resp = send.send_request(req).await?;
                                let closes = resp
                                    .headers()
                                    .get("connection")
                                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                                let status = resp.status().as_u16();
                                resp.into_body().collect().await?;
                                if closes {
                                    conn = None;
                                }
                                Ok(status == 200)
                            })
                            .await
                            .unwrap_or_else(|_| Err("timed out after 10s".into()));
                        match res {
                            Ok(true) => ok += 1,
                            Ok(false) => failures.push("non-200".to_owned()),
                            Err(e) => {
                                failures.push(e.to_string());
                                conn = None;
                            }
                        }
                    }
                    (ok, failures)
                })
            })
            .collect();
        TlsLoad { stop, tasks }
    }

    pub async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut ok, mut failures) = (0, Vec::new());
        for t in self.tasks {
            let (o, f) = t.await.unwrap();
            ok += o;
            failures.extend(f);
        }
        (ok, failures)
    }
}

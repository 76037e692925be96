//! HTTPS: rustls, a certificate chain and key from PEM files, ALPN `h2` and
//! `http/1.1` on one port, and a certificate that can be swapped without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{info, warn};

use crate::error::Error;

/// How long a TLS handshake may take by default before the connection is closed.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A server certificate and its key, read from PEM files, for [`Server::tls`].
///
/// Cloning gives another handle on the same certificate: [`Tls::reload`] through any
/// handle changes what every new handshake is served. Connections already established
/// keep theirs. Each generation of a restarted server reads the files again at start,
/// so a renewed certificate is served after a restart as well.
///
/// [`Server::tls`]: super::Server::tls
#[derive(Clone)]
pub struct Tls {
    inner: Arc<Inner>,
}

struct Inner {
    cert: PathBuf,
    key: PathBuf,
    acceptor: RwLock<TlsAcceptor>,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.inner.cert)
            .field("key", &self.inner.key)
            .field("handshake_timeout", &self.inner.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads the certificate chain (the server's certificate first, then the
    /// intermediates) and the private key (PKCS#8, PKCS#1 or SEC1) from PEM files.
    /// An expired certificate, or one not valid yet, is served, with a warning.
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] naming the file and what is wrong: unreadable, no certificate or
    /// key in it, malformed, or a key that does not match the certificate.
    pub fn from_pem_files(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Result<Tls, Error> {
        Tls::with_handshake_timeout(cert, key, DEFAULT_HANDSHAKE_TIMEOUT)
    }

    /// [`from_pem_files`](Tls::from_pem_files) with a handshake timeout other than
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`]: a client that has not completed its handshake by
    /// then is disconnected (a slow or stalled client cannot hold a connection open).
    ///
    /// # Errors
    ///
    /// As `from_pem_files`; [`Error::InvalidDuration`] outside 1 ms..=24 h.
    pub fn with_handshake_timeout(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        handshake_timeout: Duration,
    ) -> Result<Tls, Error> {
        let (cert, key) = (cert.into(), key.into());
        let handshake_timeout =
            crate::error::check_limit("TLS handshake timeout", handshake_timeout)?;
        let config = load(&cert, &key)?;
        Ok(Tls {
            inner: Arc::new(Inner {
                cert,
                key,
                acceptor: RwLock::new(TlsAcceptor::from(Arc::new(config))),
                handshake_timeout,
            }),
        })
    }

    /// Reads the files again and serves what they hold to every new handshake. If they
    /// are broken, nothing changes: the certificate served so far stays, and the error
    /// says why.
    ///
    /// # Errors
    ///
    /// As [`from_pem_files`](Tls::from_pem_files).
    pub fn reload(&self) -> Result<(), Error> {
        match load(&self.inner.cert, &self.inner.key) {
            Ok(config) => {
                *self
                    .inner
                    .acceptor
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    TlsAcceptor::from(Arc::new(config));
                info!(
                    pid = std::process::id(),
                    cert = %self.inner.cert.display(),
                    "TLS certificate reloaded: new handshakes get it"
                );
                Ok(())
            }
            Err(e) => {
                warn!(
                    pid = std::process::id(),
                    error = %e,
                    "TLS certificate reload failed; the previous certificate is served on"
                );
                Err(e)
            }
        }
    }

    /// The acceptor for one new connection (one uncontended read lock per connection,
    /// none per request).
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.inner
            .acceptor
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn handshake_timeout(&self) -> Duration {
        self.inner.handshake_timeout
    }
}

fn load(cert_path: &Path, key_path: &Path) -> Result<ServerConfig, Error> {
    let bad = |path: &Path, reason: String| Error::Tls {
        path: path.to_owned(),
        reason,
    };
    let cert_pem =
        std::fs::read(cert_path).map_err(|e| bad(cert_path, format!("cannot read it: {e}")))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(cert_path, format!("malformed PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            cert_path,
            "no certificate in it (expected PEM blocks `-----BEGIN CERTIFICATE-----`)".into(),
        ));
    }
    let key_pem =
        std::fs::read(key_path).map_err(|e| bad(key_path, format!("cannot read it: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        bad(
            key_path,
            format!("no usable private key in it (PKCS#8, PKCS#1 or SEC1 PEM expected): {e}"),
        )
    })?;
    warn_if_not_valid_now(cert_path, &certs[0]);
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(cert_path, format!("TLS setup: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            let why = match e {
                tokio_rustls::rustls::Error::InconsistentKeys(_) => {
                    format!(
                        "the key in {} does not match this certificate",
                        key_path.display()
                    )
                }
                other => format!("the certificate or key is unusable: {other}"),
            };
            bad(cert_path, why)
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Stateless session tickets, sealed with the service's keys: they outlive a restart
    // (the keys go to the next generation), where a session cache would not.
    crate::tickets::Ticketer::ensure_keys();
    config.ticketer = Arc::new(crate::tickets::Ticketer);
    Ok(config)
}

/// Served anyway (an outage for an expired certificate would be worse than a browser
/// warning), but said loudly.
fn warn_if_not_valid_now(path: &Path, cert: &CertificateDer<'_>) {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let Ok((_, parsed)) = X509Certificate::from_der(cert.as_ref()) else {
        warn!(cert = %path.display(), "cannot read the certificate's validity period");
        return;
    };
    let validity = parsed.validity();
    let now = x509_parser::time::ASN1Time::now();
    if validity.not_after < now {
        warn!(
            pid = std::process::id(),
            cert = %path.display(),
            "the TLS certificate EXPIRED on {}; it is served anyway: renew it",
            validity.not_after
        );
    } else if validity.not_before > now {
        warn!(
            pid = std::process::id(),
            cert = %path.display(),
            "the TLS certificate is not valid before {}; it is served anyway",
            validity.not_before
        );
    }
}

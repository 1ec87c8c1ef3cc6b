//! TLS for a database lab's sessions, as libpq's `sslmode` asks (see
//! [`Tls`]), with rustls and its `ring` provider: pure Rust and C that any
//! C compiler builds, so mama builds without OpenSSL's headers or cmake.
//!
//! - `prefer`, `allow`, and `require` without a root certificate encrypt
//!   without checking who answers (as libpq: they guard against
//!   listeners, not against an impostor);
//! - `verify-ca` (and `require` with a root certificate) checks that the
//!   certificate is signed by one of the root certificates;
//! - `verify-full` checks that too, and that it is made out to the host
//!   name the URL gives.
//!
//! The connector also records whether a handshake took place, so that a
//! password sent in clear over the network can be told of.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use postgres::tls::{MakeTlsConnect, TlsConnect};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};
use crate::settings::url::{SslMode, Tls};

/// The connector for one session: rustls, configured for `tls` (none
/// where the session is opened in clear), and whether it was used.
pub struct Connector {
    inner: Option<MakeRustlsConnect>,
    used: Arc<AtomicBool>,
}

impl Connector {
    /// The connector `tls` asks for, set up once a process (the root
    /// certificates read once); a root certificate file that `verify-*`
    /// needs and cannot be read is an error naming it. `encrypted`: whether
    /// the session may be encrypted at all (not for `disable`, nor for
    /// `allow`'s first try).
    pub fn new(tls: &Tls, encrypted: bool) -> Result<Connector> {
        static MADE: Mutex<Option<(Tls, MakeRustlsConnect)>> = Mutex::new(None);
        let inner = if encrypted {
            let mut made = MADE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match made.as_ref() {
                Some((made_for, connector)) if made_for == tls => Some(connector.clone()),
                _ => {
                    let connector = Self::make(tls)?;
                    *made = Some((tls.clone(), connector.clone()));
                    Some(connector)
                }
            }
        } else {
            None
        };
        Ok(Connector {
            inner,
            used: Arc::new(AtomicBool::new(false)),
        })
    }

    fn make(tls: &Tls) -> Result<MakeRustlsConnect> {
        // Deprecated for lacking post-quantum key exchange, which only the
        // aws-lc-rs provider has, and that one needs cmake to build.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = if tls.verifies() {
            Some(roots(tls)?)
        } else {
            None
        };
        let checked = match roots {
            Some(roots) => Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| {
                        Error::Invalid(format!("cannot use the root certificates: {e}"))
                    })?,
            ),
            None => None,
        };
        let verifier = Verifier {
            checked,
            names: tls.mode == SslMode::VerifyFull,
            root_cert: tls
                .root_cert
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            algorithms: provider.signature_verification_algorithms,
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Invalid(format!("cannot set up TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }

    /// Whether a session made with this connector was encrypted (the
    /// server took TLS).
    pub fn used(&self) -> Arc<AtomicBool> {
        self.used.clone()
    }
}

/// The root certificates of `tls`: every certificate in its PEM file.
fn roots(tls: &Tls) -> Result<RootCertStore> {
    let Some(path) = tls.root_cert.as_deref() else {
        return Err(missing_root(tls, Path::new("~/.postgresql/root.crt")));
    };
    if !path.exists() {
        return Err(missing_root(tls, path));
    }
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| {
            Error::Invalid(format!(
                "cannot read the root certificates in {} (sslrootcert): {e}",
                path.display()
            ))
        })?;
    let mut store = RootCertStore::empty();
    let (_, refused) = store.add_parsable_certificates(certs);
    if store.is_empty() {
        return Err(Error::Invalid(format!(
            "{} (sslrootcert) holds no usable root certificate{}",
            path.display(),
            if refused > 0 {
                " (none could be read)"
            } else {
                ""
            }
        )));
    }
    Ok(store)
}

fn missing_root(tls: &Tls, path: &Path) -> Error {
    Error::Invalid(format!(
        "sslmode {} checks the server's certificate against root certificates, and {} \
         (sslrootcert) does not exist: give the file that holds the certificate of the \
         authority that signed the server's (sslrootcert=PATH in the URL, or PGSSLROOTCERT)",
        tls.mode.name(),
        path.display()
    ))
}

/// Checks the server's certificate as the mode asks.
#[derive(Debug)]
struct Verifier {
    /// The root certificates' checker; none: nothing is checked.
    checked: Option<Arc<WebPkiServerVerifier>>,
    /// Whether the certificate must name the host (`verify-full`).
    names: bool,
    /// The root certificate file, for messages.
    root_cert: String,
    algorithms: WebPkiSupportedAlgorithms,
}

/// `e` as an error of the server's certificate that says what is wrong.
fn refused(why: String) -> rustls::Error {
    let why: Arc<dyn std::error::Error + Send + Sync> = Arc::new(std::io::Error::other(why));
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(why)))
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(checked) = &self.checked else {
            return Ok(ServerCertVerified::assertion());
        };
        match checked.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Ok(verified) => Ok(verified),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.names => Ok(ServerCertVerified::assertion()),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Err(refused(format!(
                "the server's certificate is not made out to the host name {} \
                 (sslmode verify-full)",
                server_name.to_str()
            ))),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature,
            )) => Err(refused(format!(
                "the server's certificate is not signed by a certificate authority in {} \
                 (sslrootcert)",
                self.root_cert
            ))),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            )) => Err(refused("the server's certificate has expired".into())),
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl<S> MakeTlsConnect<S> for Connector
where
    MakeRustlsConnect: MakeTlsConnect<S>,
    <MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect: TlsConnect<S, Error = std::io::Error>,
    <<MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect as TlsConnect<S>>::Future: Send + 'static,
    <MakeRustlsConnect as MakeTlsConnect<S>>::Stream: Send + 'static,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = Used<<MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect>;
    type Error = std::io::Error;

    /// Asked for every session, encrypted or not: one in clear never
    /// uses what it gives.
    fn make_tls_connect(
        &mut self,
        domain: &str,
    ) -> std::result::Result<Self::TlsConnect, Self::Error> {
        let inner = match self.inner.as_mut() {
            Some(inner) => Some(
                inner
                    .make_tls_connect(domain)
                    .map_err(|e| std::io::Error::other(e.into()))?,
            ),
            None => None,
        };
        Ok(Used {
            inner,
            used: self.used.clone(),
        })
    }
}

/// A handshake about to be made, which marks its connector used; none
/// for a session in clear.
pub struct Used<T> {
    inner: Option<T>,
    used: Arc<AtomicBool>,
}

type Handshake<T> = std::pin::Pin<
    Box<dyn std::future::Future<Output = std::result::Result<T, std::io::Error>> + Send>,
>;

impl<S, T> TlsConnect<S> for Used<T>
where
    T: TlsConnect<S, Error = std::io::Error>,
    T::Future: Send + 'static,
    T::Stream: Send + 'static,
{
    type Stream = T::Stream;
    type Error = std::io::Error;
    type Future = Handshake<T::Stream>;

    fn connect(self, stream: S) -> Self::Future {
        match self.inner {
            Some(inner) => {
                self.used.store(true, Ordering::SeqCst);
                Box::pin(inner.connect(stream))
            }
            None => Box::pin(std::future::ready(Err(std::io::Error::other(
                "TLS was not set up for this session (sslmode disable)",
            )))),
        }
    }
}

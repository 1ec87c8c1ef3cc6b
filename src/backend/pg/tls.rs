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
//! A client certificate (`sslcert`, `sslkey`, or libpq's files under
//! `~/.postgresql`) is read with the root certificates and shown to a
//! server that asks for one; as libpq, a private key that group or others
//! may read is refused.
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
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};
use crate::settings::url::{SslFile, SslMode, Tls};

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
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Invalid(format!("cannot set up TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let config = match client_identity(tls, crate::os::effective_user_id())? {
            Some(identity) => builder
                .with_client_auth_cert(identity.chain, identity.key)
                .map_err(|e| {
                    Error::Invalid(format!(
                        "cannot use the client certificate {} ({}) with the private key {} \
                         ({}): {e}",
                        identity.cert_file.path.display(),
                        identity.cert_file.setting(),
                        identity.key_file.path.display(),
                        identity.key_file.setting()
                    ))
                })?,
            None => builder.with_no_client_auth(),
        };
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

/// A client certificate chain and its key, read, with the files they
/// came from.
struct Identity<'a> {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_file: &'a SslFile,
    key_file: &'a SslFile,
}

/// The client certificate `tls` names, and its key, as libpq finds them:
/// a file the URL or the environment names must be there; libpq's
/// defaults (`~/.postgresql/postgresql.crt`, `.key`) are used where they
/// are. A certificate without a key, or a key named without a
/// certificate, is an error saying what is missing. `euid`: the user the
/// key's permissions are judged for.
fn client_identity(tls: &Tls, euid: u32) -> Result<Option<Identity<'_>>> {
    fn used(file: &Option<SslFile>) -> Option<&SslFile> {
        file.as_ref().filter(|file| file.in_use())
    }
    let (cert_file, key_file) = match (used(&tls.client_cert), used(&tls.client_key)) {
        (None, None) => return Ok(None),
        // libpq's default key alone is not used, nor asked about.
        (None, Some(key)) if !key.given() => return Ok(None),
        (None, Some(key)) => {
            return Err(Error::Invalid(format!(
                "the private key {} ({}) is given without a client certificate: name the \
                 certificate with sslcert=PATH in the URL (or PGSSLCERT)",
                key.path.display(),
                key.setting()
            )));
        }
        (Some(cert), None) => {
            let looked = tls
                .client_key
                .as_ref()
                .map(|key| format!(" ({} is not there)", key.path.display()))
                .unwrap_or_default();
            return Err(Error::Invalid(format!(
                "the client certificate {} ({}) has no private key{looked}: name the key \
                 with sslkey=PATH in the URL (or PGSSLKEY)",
                cert.path.display(),
                cert.setting()
            )));
        }
        (Some(cert), Some(key)) => (cert, key),
    };
    let chain = read_chain(cert_file)?;
    let key = read_key(key_file, euid)?;
    Ok(Some(Identity {
        chain,
        key,
        cert_file,
        key_file,
    }))
}

/// `file`'s bytes, or an error saying which file `what` is and why it
/// cannot be read.
fn read_ssl_file(file: &SslFile, what: &str) -> Result<Vec<u8>> {
    std::fs::read(&file.path).map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::NotFound {
            "it does not exist".to_string()
        } else {
            e.to_string()
        };
        Error::Invalid(format!(
            "cannot read the {what} {} ({}): {why}",
            file.path.display(),
            file.setting()
        ))
    })
}

/// The certificates of `file` (PEM), the client's own first.
fn read_chain(file: &SslFile) -> Result<Vec<CertificateDer<'static>>> {
    let text = read_ssl_file(file, "client certificate")?;
    let chain = CertificateDer::pem_slice_iter(&text)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::Invalid(format!(
                "the client certificate {} ({}) cannot be read as PEM: {e}",
                file.path.display(),
                file.setting()
            ))
        })?;
    if chain.is_empty() {
        return Err(Error::Invalid(format!(
            "the client certificate {} ({}) holds no certificate (PEM, \
             -----BEGIN CERTIFICATE-----)",
            file.path.display(),
            file.setting()
        )));
    }
    Ok(chain)
}

/// The private key of `file` (PEM: PKCS#8, PKCS#1 or SEC1), refused as
/// libpq refuses it where group or others may read it: a file of the user
/// `euid` must be 0600 or less, one of root's 0640 or less.
fn read_key(file: &SslFile, euid: u32) -> Result<PrivateKeyDer<'static>> {
    use std::os::unix::fs::MetadataExt;
    let shown = || format!("{} ({})", file.path.display(), file.setting());
    // The file's metadata, as libpq's stat(); a missing file is said by
    // the read below.
    if let Ok(meta) = std::fs::metadata(&file.path) {
        if !meta.is_file() {
            return Err(Error::Invalid(format!(
                "the private key {} is not a regular file",
                shown()
            )));
        }
        let mode = meta.mode() & 0o7777;
        let owner = meta.uid();
        if (owner == euid && mode & 0o077 != 0) || (owner == 0 && mode & 0o037 != 0) {
            return Err(Error::Invalid(format!(
                "the private key {} has group or world access (mode {mode:04o}): it must \
                 be u=rw (0600) or less if owned by the current user, or u=rw,g=r (0640) \
                 or less if owned by root, as libpq asks: chmod 600 {}",
                shown(),
                file.path.display()
            )));
        }
    }
    let text = read_ssl_file(file, "private key")?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| {
        let encrypted = String::from_utf8_lossy(&text).contains("ENCRYPTED");
        let why = if encrypted {
            "the key is encrypted, and mama reads only unencrypted keys (no sslpassword): \
             write it out unencrypted with `openssl pkey -in KEY -out KEY.new`"
                .to_string()
        } else if matches!(e, rustls::pki_types::pem::Error::NoItemsFound) {
            "it holds no private key (PEM: -----BEGIN PRIVATE KEY----- (PKCS#8), \
             -----BEGIN RSA PRIVATE KEY----- (PKCS#1) or -----BEGIN EC PRIVATE KEY----- \
             (SEC1))"
                .to_string()
        } else {
            e.to_string()
        };
        Error::Invalid(format!("cannot use the private key {}: {why}", shown()))
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::url::SslFrom;
    use std::os::unix::fs::PermissionsExt;

    fn file(path: &Path, from: SslFrom, parameter: &'static str) -> Option<SslFile> {
        Some(SslFile {
            path: path.to_path_buf(),
            from,
            parameter,
            variable: if parameter == "sslcert" {
                "PGSSLCERT"
            } else {
                "PGSSLKEY"
            },
        })
    }

    fn tls(cert: Option<SslFile>, key: Option<SslFile>) -> Tls {
        Tls {
            mode: SslMode::Require,
            root_cert: None,
            given: true,
            guards_password: false,
            client_cert: cert,
            client_key: key,
        }
    }

    fn refusal(tls: &Tls, euid: u32) -> String {
        match client_identity(tls, euid) {
            Ok(None) => "none".into(),
            Ok(Some(_)) => "an identity".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_certificate_needs_its_key_and_a_key_its_certificate() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let (cert, key) = (dir.path().join("me.crt"), dir.path().join("me.key"));
        // libpq's defaults, not there: no client certificate, no error.
        let defaults = tls(
            file(&cert, SslFrom::Default, "sslcert"),
            file(&key, SslFrom::Default, "sslkey"),
        );
        assert_eq!(refusal(&defaults, 1000), "none");
        // A default key alone is not asked about; a named one is an error.
        std::fs::write(&key, "not a key").expect("write");
        assert_eq!(refusal(&defaults, 1000), "none");
        let key_only = tls(
            file(&cert, SslFrom::Default, "sslcert"),
            file(&key, SslFrom::Environment, "sslkey"),
        );
        let said = refusal(&key_only, 1000);
        assert!(
            said.contains(&format!("{} (PGSSLKEY) is given without", key.display()))
                && said.contains("sslcert=PATH"),
            "{said}"
        );
        // A certificate named, its key's default not there.
        std::fs::remove_file(&key).expect("rm");
        let cert_only = tls(
            file(&cert, SslFrom::Url, "sslcert"),
            file(&key, SslFrom::Default, "sslkey"),
        );
        let said = refusal(&cert_only, 1000);
        assert!(
            said.contains(&format!(
                "{} (sslcert) has no private key ({} is not there)",
                cert.display(),
                key.display()
            )),
            "{said}"
        );
        // Named and not there: said so, naming the setting.
        let named = tls(
            file(&cert, SslFrom::Url, "sslcert"),
            file(&key, SslFrom::Url, "sslkey"),
        );
        let said = refusal(&named, 1000);
        assert!(
            said.contains(&format!(
                "cannot read the client certificate {} (sslcert): it does not exist",
                cert.display()
            )),
            "{said}"
        );
    }

    #[test]
    fn a_key_others_may_read_is_refused_as_libpq_refuses_it() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let key = dir.path().join("me.key");
        std::fs::write(&key, "no PEM here").expect("write");
        let key_file = file(&key, SslFrom::Url, "sslkey").expect("a file");
        let owner = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(&key).expect("stat").uid()
        };
        let judged = |mode: u32, euid: u32| {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).expect("chmod");
            match read_key(&key_file, euid) {
                Ok(_) => "read".to_string(),
                Err(e) => e.to_string(),
            }
        };
        let open = judged(0o644, owner);
        assert!(
            open.contains(&format!(
                "{} (sslkey) has group or world access (mode 0644)",
                key.display()
            )) && open.contains(&format!("chmod 600 {}", key.display())),
            "{open}"
        );
        assert!(judged(0o640, owner).contains("group or world access"));
        // Past the permissions: this one is no key.
        assert!(judged(0o600, owner).contains("holds no private key"));
        assert!(judged(0o400, owner).contains("holds no private key"));
        // Owned by root and read by mama as another user: 0640 will do,
        // 0644 will not. Another user's file is not judged (as libpq).
        if owner == 0 {
            assert!(judged(0o640, 1000).contains("holds no private key"));
            assert!(judged(0o644, 1000).contains("group or world access"));
        } else {
            assert!(judged(0o644, owner + 1).contains("holds no private key"));
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(
            &key,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .expect("write");
        assert!(judged(0o600, owner).contains("the key is encrypted"));
    }
}

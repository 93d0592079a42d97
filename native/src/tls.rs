//! TLS for the master (https and wss) and the worker (wss), with rustls and
//! ring as its one crypto provider. The master's handshakes happen at its gate
//! (`master/gate.rs`), within the handshake timeout.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::cli::BadInput;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The master's certificate and key, ready to serve.
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    /// The master's own certificate: its in-process workers trust exactly this.
    pub certificate: CertificateDer<'static>,
}

impl ServerTls {
    /// Loads a PEM certificate chain and private key.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, BadInput> {
        let bad = |path: &Path, problem: String| BadInput(format!("{}: {problem}", path.display()));
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(Iterator::collect)
            .map_err(|e| bad(cert, format!("cannot read a PEM certificate: {e}")))?;
        let certificate = chain.first().cloned().ok_or_else(|| bad(cert, "no certificate in it (expected PEM)".into()))?;
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, format!("cannot read a PEM private key: {e}")))?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(|e| bad(key, format!("does not go with {}: {e}", cert.display())))?;
        Ok(Self { config: Arc::new(config), certificate })
    }
}

/// What a worker trusts: the public web's roots; and with `ca` (PEM), each
/// certificate in it both as a CA and as a pin. A pin is what makes the usual
/// self-signed certificate work: openssl marks it CA:TRUE, and webpki refuses a
/// CA certificate as an end entity, whoever signed it.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, BadInput> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions");
    let Some(ca) = ca else {
        return Ok(Arc::new(builder.with_root_certificates(roots).with_no_client_auth()));
    };
    let bad = |problem: String| BadInput(format!("{}: {problem}", ca.display()));
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(ca).and_then(Iterator::collect).map_err(|e| bad(format!("cannot read a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no certificate in it (expected PEM)".into()));
    }
    for cert in &certs {
        roots.add(cert.clone()).map_err(|e| bad(format!("not a usable certificate: {e}")))?;
    }
    let signed = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .expect("the public roots make the store non-empty");
    let verifier = Arc::new(PinnedOrSigned { pinned: Pinned { certificates: certs, provider: provider() }, signed });
    Ok(Arc::new(builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth()))
}

/// Trusts exactly `certificate`, whatever name it carries: for the master's own
/// in-process workers, which reach it over loopback.
pub fn pinned_client_config(certificate: CertificateDer<'static>) -> Arc<ClientConfig> {
    let verifier = Arc::new(Pinned { certificates: vec![certificate], provider: provider() });
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Arc::new(config)
}

/// Accepts a server certificate identical to one of `certificates`, whatever
/// its name and dates: the user vouched for these exact bytes. The handshake
/// signature is still checked with the certificate's key, so only the key's
/// holder can present it.
#[derive(Debug)]
struct Pinned {
    certificates: Vec<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.certificates.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the pinned certificate".into()))
        }
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A pinned certificate, or else one that chains to a root by webpki's rules
/// (names, dates, key usage). Handshake signatures are checked the same way
/// either way, so `Pinned` checks them for both.
#[derive(Debug)]
struct PinnedOrSigned {
    pinned: Pinned,
    signed: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for PinnedOrSigned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki's error is the one worth reporting: it says why no CA vouches.
        self.pinned
            .verify_server_cert(end_entity, intermediates, name, ocsp, now)
            .or_else(|_| self.signed.verify_server_cert(end_entity, intermediates, name, ocsp, now))
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.pinned.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.pinned.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.pinned.supported_verify_schemes()
    }
}

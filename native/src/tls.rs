//! TLS for the master (https and wss) and the worker (wss), with rustls and
//! ring as its one crypto provider. The master's handshakes happen at its gate
//! (`master/gate.rs`), within the handshake timeout.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
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

/// What a worker trusts: the public web's roots, plus the CAs in `ca` (PEM) if given.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, BadInput> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = ca {
        let bad = |problem: String| BadInput(format!("{}: {problem}", ca.display()));
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(ca).and_then(Iterator::collect).map_err(|e| bad(format!("cannot read a PEM certificate: {e}")))?;
        if certs.is_empty() {
            return Err(bad("no certificate in it (expected PEM)".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Trusts exactly `certificate`, whatever name it carries: for the master's own
/// in-process workers, which reach it over loopback.
pub fn pinned_client_config(certificate: CertificateDer<'static>) -> Arc<ClientConfig> {
    let verifier = Arc::new(Pinned { certificate, provider: provider() });
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Arc::new(config)
}

#[derive(Debug)]
struct Pinned {
    certificate: CertificateDer<'static>,
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
        if end_entity.as_ref() == self.certificate.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not this master's own certificate".into()))
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

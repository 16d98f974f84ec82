//! TLS 1.3 for the pool (QUIC, and TCP through tokio-rustls), bound to
//! masternode keys.
//!
//! Owns the certificate verifiers and the rustls/quinn configurations. A
//! certificate is accepted only if its SubjectPublicKeyInfo is exactly the
//! ed25519 key we expect (client side: the peer being dialed; server side: any
//! key in the peer table), there is no chain, and the TLS 1.3 CertificateVerify
//! signature verifies under that key. Names, dates and the certificate's own
//! self-signature are not looked at: possession of the registered key is the
//! whole identity. There is no "accept any certificate" path.
//!
//! The handshake signature is checked twice, both with the crypto provider's
//! algorithms: once by rustls/webpki against the key webpki parses from the
//! certificate, and once against the SubjectPublicKeyInfo we build ourselves
//! from the peer table, so no disagreement between our DER walk and webpki's
//! parser can substitute a key.

use std::collections::HashSet;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, PeerIncompatible,
    PeerMisbehaved, SignatureScheme,
};
use thiserror::Error;

use super::identity::{ed25519_spki, peer_id_from_spki, Credentials, PeerId};

/// ALPN of the pool protocol.
pub const ALPN: &[u8] = b"timecoin/1";

/// The name in our certificates and in the client's SNI. Never checked.
pub(crate) const SERVER_NAME: &str = "masternode.timecoin";

/// Why a certificate was refused, carried inside [`rustls::Error`].
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BindingError {
    #[error("certificate is not a single DER certificate with an ed25519 key")]
    NotEd25519,
    #[error("certificate chains are not accepted ({intermediates} intermediates)")]
    Chain { intermediates: usize },
    #[error("certificate key is not the key of the peer being dialed")]
    WrongPeer { presented: PeerId, expected: PeerId },
    #[error("certificate key is not in the peer table")]
    UnknownPeer { presented: PeerId },
}

impl From<BindingError> for rustls::Error {
    fn from(e: BindingError) -> Self {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
    }
}

/// The crypto provider used for every pool TLS session.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// DER of the certificate's subjectPublicKeyInfo (whole TLV), found by a
/// bounded walk of `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE {
/// [0] version OPTIONAL, serialNumber, signature, issuer, validity, subject,
/// subjectPublicKeyInfo, .. }, .. }`. `None` on anything malformed.
pub(crate) fn cert_spki(cert: &[u8]) -> Option<&[u8]> {
    let (_, cert_body, rest) = der_tlv(cert, 0x30)?;
    if !rest.is_empty() {
        return None;
    }
    let (_, tbs, _) = der_tlv(cert_body, 0x30)?;
    let mut r = tbs;
    if r.first() == Some(&0xa0) {
        r = der_tlv(r, 0xa0)?.2;
    }
    // serialNumber, signature, issuer, validity, subject
    for tag in [0x02, 0x30, 0x30, 0x30, 0x30] {
        r = der_tlv(r, tag)?.2;
    }
    Some(der_tlv(r, 0x30)?.0)
}

/// Splits one DER TLV with the given tag off `input`: (whole TLV, contents,
/// rest). Definite, minimal lengths of at most 3 bytes only.
fn der_tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8], &[u8])> {
    if *input.first()? != tag {
        return None;
    }
    let first = *input.get(1)?;
    let (len, header): (usize, usize) = match first {
        0..=0x7f => (first as usize, 2),
        0x81 => {
            let l = *input.get(2)? as usize;
            (l >= 0x80).then_some((l, 3))?
        }
        0x82 => {
            let l = u16::from_be_bytes([*input.get(2)?, *input.get(3)?]) as usize;
            (l >= 0x100).then_some((l, 4))?
        }
        0x83 => {
            let l = u32::from_be_bytes([0, *input.get(2)?, *input.get(3)?, *input.get(4)?]);
            (l >= 0x1_0000).then_some((l as usize, 5))?
        }
        _ => return None,
    };
    let end = header.checked_add(len)?;
    if end > input.len() {
        return None;
    }
    Some((&input[..end], &input[header..end], &input[end..]))
}

/// The masternode key a certificate is bound to.
pub(crate) fn cert_peer_id(cert: &CertificateDer<'_>) -> Result<PeerId, BindingError> {
    cert_spki(cert)
        .and_then(peer_id_from_spki)
        .ok_or(BindingError::NotEd25519)
}

/// Checks the TLS 1.3 CertificateVerify signature of a certificate already
/// bound to `key`.
fn verify_bound_signature(
    algs: &WebPkiSupportedAlgorithms,
    key: &PeerId,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if cert_peer_id(cert)? != *key {
        return Err(BindingError::WrongPeer {
            presented: cert_peer_id(cert)?,
            expected: *key,
        }
        .into());
    }
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into());
    }
    rustls::crypto::verify_tls13_signature(message, cert, dss, algs)?;
    let spki = ed25519_spki(key);
    rustls::crypto::verify_tls13_signature_with_raw_key(
        message,
        &SubjectPublicKeyInfoDer::from(&spki[..]),
        dss,
        algs,
    )
}

/// Client side: accepts exactly the key of the peer being dialed.
#[derive(Debug)]
pub(crate) struct ExpectedPeerVerifier {
    expected: PeerId,
    algs: WebPkiSupportedAlgorithms,
}

impl ExpectedPeerVerifier {
    pub(crate) fn new(expected: PeerId, provider: &CryptoProvider) -> Self {
        ExpectedPeerVerifier {
            expected,
            algs: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for ExpectedPeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(BindingError::Chain {
                intermediates: intermediates.len(),
            }
            .into());
        }
        let presented = cert_peer_id(end_entity)?;
        if presented != self.expected {
            return Err(BindingError::WrongPeer {
                presented,
                expected: self.expected,
            }
            .into());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(PeerIncompatible::Tls13RequiredForQuic.into())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_bound_signature(&self.algs, &self.expected, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Server side: accepts any key in the peer table; which one it was is read
/// back from the connection with [`cert_peer_id`].
#[derive(Debug)]
pub(crate) struct PeerTableVerifier {
    peers: Arc<HashSet<PeerId>>,
    algs: WebPkiSupportedAlgorithms,
}

impl PeerTableVerifier {
    pub(crate) fn new(peers: Arc<HashSet<PeerId>>, provider: &CryptoProvider) -> Self {
        PeerTableVerifier {
            peers,
            algs: provider.signature_verification_algorithms,
        }
    }

    fn registered(&self, cert: &CertificateDer<'_>) -> Result<PeerId, BindingError> {
        let presented = cert_peer_id(cert)?;
        if self.peers.contains(&presented) {
            Ok(presented)
        } else {
            Err(BindingError::UnknownPeer { presented })
        }
    }
}

impl ClientCertVerifier for PeerTableVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(BindingError::Chain {
                intermediates: intermediates.len(),
            }
            .into());
        }
        self.registered(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(PeerIncompatible::Tls13RequiredForQuic.into())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let key = self.registered(cert)?;
        verify_bound_signature(&self.algs, &key, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// rustls server configuration for the TCP pool: [`server_config`] with ALPN
/// [`super::handshake::ALPN_TCP`].
pub(crate) fn tcp_server_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    peers: Arc<HashSet<PeerId>>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut cfg = server_config(cert, key, peers)?;
    cfg.alpn_protocols = vec![super::handshake::ALPN_TCP.to_vec()];
    Ok(cfg)
}

/// rustls client configuration for the TCP pool: [`client_config`] with
/// ALPN [`super::handshake::ALPN_TCP`].
pub(crate) fn tcp_client_config(
    creds: &Credentials,
    expected: PeerId,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut cfg = client_config(creds, expected)?;
    cfg.alpn_protocols = vec![super::handshake::ALPN_TCP.to_vec()];
    Ok(cfg)
}

/// rustls server configuration: TLS 1.3 only, mandatory client certificates
/// from the peer table, ALPN `timecoin/1`. No session tickets, no session
/// cache, no early data (0-RTT): every connection runs the full handshake
/// with both certificates and fresh key shares, so nothing recorded from an
/// earlier connection is accepted on a new one.
pub(crate) fn server_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    peers: Arc<HashSet<PeerId>>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = provider();
    let verifier = Arc::new(PeerTableVerifier::new(peers, &provider));
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert], key)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    cfg.max_early_data_size = 0;
    Ok(cfg)
}

/// rustls client configuration for dialing the peer whose key is `expected`,
/// presenting `creds`. No resumption, no early data.
pub(crate) fn client_config(
    creds: &Credentials,
    expected: PeerId,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = provider();
    let verifier = Arc::new(ExpectedPeerVerifier::new(expected, &provider));
    let resolver = Arc::new(rustls::sign::SingleCertAndKey::from(
        (*creds.certified).clone(),
    ));
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        // rustls calls every custom verifier "dangerous"; this one checks
        // the key binding and the handshake signature.
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(resolver);
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.resumption = rustls::client::Resumption::disabled();
    cfg.enable_early_data = false;
    Ok(cfg)
}

//! Masternode identity as the pool sees it: one ed25519 key, the peer id (its
//! public key) and the self-signed TLS certificate derived from it.
//!
//! The certificate carries no trust of its own: a peer is accepted because the
//! certificate's public key *is* a registered masternode key and the TLS 1.3
//! handshake signature verifies under it (see [`super::tls`]).

use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use super::PoolError;

/// A masternode's ed25519 public key. It names the peer everywhere in the pool.
pub type PeerId = [u8; 32];

/// DER of an ed25519 SubjectPublicKeyInfo up to the key (RFC 8410):
/// `SEQUENCE { SEQUENCE { OID 1.3.101.112 } BIT STRING (0 unused bits) }`.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Length of an ed25519 SubjectPublicKeyInfo.
pub(crate) const ED25519_SPKI_LEN: usize = 44;

/// The only SubjectPublicKeyInfo encoding that names `key`.
pub(crate) fn ed25519_spki(key: &PeerId) -> [u8; ED25519_SPKI_LEN] {
    let mut out = [0u8; ED25519_SPKI_LEN];
    out[..12].copy_from_slice(&ED25519_SPKI_PREFIX);
    out[12..].copy_from_slice(key);
    out
}

/// The ed25519 key in `spki`, if `spki` is exactly an ed25519
/// SubjectPublicKeyInfo (no parameters, no trailing bytes).
pub(crate) fn peer_id_from_spki(spki: &[u8]) -> Option<PeerId> {
    if spki.len() != ED25519_SPKI_LEN || spki[..12] != ED25519_SPKI_PREFIX {
        return None;
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&spki[12..]);
    Some(key)
}

/// The peer id of the masternode whose secret seed is `secret`.
pub fn peer_id_from_secret(secret: &[u8; 32]) -> PeerId {
    SigningKey::from_bytes(secret).verifying_key().to_bytes()
}

/// Whether `id` can name a peer: a curve point not of small order (anyone can
/// forge signatures for a small-order key, see [`timecoin_core::sig`]).
pub(crate) fn is_usable_peer_key(id: &PeerId) -> bool {
    timecoin_core::sig::is_point(id) && !timecoin_core::sig::is_small_order(id)
}

/// This masternode's key.
pub(crate) struct Identity {
    signing: SigningKey,
    id: PeerId,
}

impl Identity {
    pub(crate) fn from_secret(secret: &[u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(secret);
        let id = signing.verifying_key().to_bytes();
        Identity { signing, id }
    }

    pub(crate) fn peer_id(&self) -> PeerId {
        self.id
    }

    #[cfg(test)]
    pub(crate) fn secret_for_tests(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// [`Self::tls_credentials`] as presented by a dialer.
    pub(crate) fn credentials(&self) -> Result<Credentials, PoolError> {
        let (cert, key) = self.tls_credentials()?;
        let certified = CertifiedKey::from_der(vec![cert], key, &super::tls::provider())?;
        Ok(Credentials {
            certified: Arc::new(certified),
        })
    }

    /// The QUIC stateless-reset key: derived from the masternode secret, so
    /// it is the same after a restart. A restarted node then answers its
    /// peers' packets for the connection its previous process held with a
    /// valid stateless reset, and they drop that connection and dial again at
    /// once instead of waiting for the idle timeout.
    /// The key of the keyed hash in this endpoint's QUIC connection IDs,
    /// the same across restarts (see `QuicNet::bind`).
    pub(crate) fn connection_id_key(&self) -> u64 {
        let master = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.signing.to_bytes());
        let derived = ring::hmac::sign(&master, b"TIMECOIN/quic-connection-id/v1");
        let mut k = [0u8; 8];
        k.copy_from_slice(&derived.as_ref()[..8]);
        u64::from_le_bytes(k)
    }

    pub(crate) fn stateless_reset_key(&self) -> ring::hmac::Key {
        let master = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.signing.to_bytes());
        let derived = ring::hmac::sign(&master, b"TIMECOIN/quic-stateless-reset/v1");
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref())
    }

    /// A self-signed certificate for this key and the key in PKCS#8, for
    /// rustls. Validity dates and names in it are never checked by peers.
    pub(crate) fn tls_credentials(
        &self,
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), PoolError> {
        let pkcs8 = self.signing.to_pkcs8_der()?;
        let pkcs8 = PrivatePkcs8KeyDer::from(pkcs8.as_bytes().to_vec());
        let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)?;
        let params = rcgen::CertificateParams::new(vec![super::tls::SERVER_NAME.to_string()])?;
        let cert = params.self_signed(&key_pair)?;
        Ok((cert.der().clone(), PrivateKeyDer::Pkcs8(pkcs8)))
    }
}

/// What one side presents in a pool TLS handshake: its certificate, and the
/// key that signs its CertificateVerify.
#[derive(Clone)]
pub struct Credentials {
    pub(crate) certified: Arc<CertifiedKey>,
}

impl Credentials {
    /// The honest credentials of the masternode whose secret seed is
    /// `secret` (certificate and signing key checked to match).
    pub fn of(secret: &[u8; 32]) -> Result<Self, PoolError> {
        Identity::from_secret(secret).credentials()
    }

    /// A forged identity, for tests of the verifiers: `signer`'s certificate
    /// with its SubjectPublicKeyInfo replaced by `claimed`'s key, and the
    /// handshake signed with `signer`'s key. Anyone can build this without
    /// `claimed`'s secret; a peer must refuse it because the CertificateVerify
    /// does not verify under `claimed` ([`super::tls`]).
    pub fn claiming(signer: &[u8; 32], claimed: &PeerId) -> Result<Self, PoolError> {
        let holder = Identity::from_secret(signer);
        let (cert, key) = holder.tls_credentials()?;
        let mut der = cert.to_vec();
        let own = ed25519_spki(&holder.peer_id());
        let at = der
            .windows(own.len())
            .position(|w| w == own)
            .ok_or(PoolError::Config("our certificate does not hold our key"))?;
        der[at..at + own.len()].copy_from_slice(&ed25519_spki(claimed));
        let signing = super::tls::provider().key_provider.load_private_key(key)?;
        Ok(Credentials {
            certified: Arc::new(CertifiedKey::new(vec![CertificateDer::from(der)], signing)),
        })
    }

    /// The certificate presented.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.certified.cert[0]
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        let id = super::tls::cert_peer_id(self.certificate()).unwrap_or([0; 32]);
        f.debug_struct("Credentials")
            .field("claims", &ShortId(&id))
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Identity")
            .field("id", &ShortId(&self.id))
            .finish()
    }
}

/// Prints the first 4 bytes of a peer id in hex, for logs.
pub struct ShortId<'a>(pub &'a PeerId);

impl std::fmt::Debug for ShortId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for ShortId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

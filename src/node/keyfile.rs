//! Key files (JSON): a masternode's or a wallet's ed25519 secret key.

use std::path::Path;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use crate::protocol::types::{Address, PublicKey};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyFile {
    /// ed25519 secret key seed, 64 hex digits. Keep this file private.
    pub secret_key: String,
    pub public_key: String,
    pub address: String,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    #[error("cannot read key file {path}: {source} (check key_file in the config; a masternode's key must be one registered in the genesis)")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("key file {path} is not valid JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("key file {path}: secret_key must be 64 hex digits")]
    BadSecret { path: String },
    #[error("key file {path}: public_key does not match the secret key")]
    Mismatch { path: String },
}

impl KeyFile {
    pub fn from_key(key: &SigningKey) -> Self {
        let pk = PublicKey::from_signing(key);
        KeyFile {
            secret_key: hex::encode(key.to_bytes()),
            public_key: pk.to_string(),
            address: Address::from_public_key(&pk).to_string(),
        }
    }

    pub fn generate() -> SigningKey {
        SigningKey::generate(&mut rand::rngs::OsRng)
    }

    /// Writes with mode 0600 (the file holds a secret).
    pub fn save(key: &SigningKey, path: &Path) -> Result<(), KeyFileError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt;
        let err = |source| KeyFileError::Write {
            path: path.display().to_string(),
            source,
        };
        let text = serde_json::to_string_pretty(&Self::from_key(key)).expect("serializable");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.write_all(b"\n").map_err(err)?;
        Ok(())
    }

    pub fn load(path: &Path) -> Result<SigningKey, KeyFileError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
            path: p.clone(),
            source,
        })?;
        let kf: KeyFile = serde_json::from_str(&text).map_err(|source| KeyFileError::Json {
            path: p.clone(),
            source,
        })?;
        let raw = hex::decode(kf.secret_key.trim())
            .map_err(|_| KeyFileError::BadSecret { path: p.clone() })?;
        let seed: [u8; 32] = raw
            .try_into()
            .map_err(|_| KeyFileError::BadSecret { path: p.clone() })?;
        let key = SigningKey::from_bytes(&seed);
        if PublicKey::from_signing(&key).to_string() != kf.public_key.trim() {
            return Err(KeyFileError::Mismatch { path: p });
        }
        Ok(key)
    }
}

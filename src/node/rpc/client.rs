//! The client side of the RPC, for `time-cli`: where a node's RPC is (from
//! its config file or from flags) and one JSON-RPC call over HTTP or HTTPS,
//! with typed errors that say what to do.
//!
//! Over HTTPS the only root trusted is the node's own certificate (its
//! `rpc_tls_cert`, or `--rpc-cacert` for a remote node): no system roots,
//! and never a verifier that accepts any certificate.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::node::config::{ConfigError, RunArgs};

/// How long the probe that tells a TLS port from a dead one may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a call did not get a JSON-RPC answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "{config} sets no rpc_listen: that node serves no RPC (set rpc_listen and restart it)"
    )]
    RpcOff { config: String },
    #[error(
        "{url}: not an RPC URL (use http://HOST:PORT/, or https://HOST:PORT/ with --rpc-cacert)"
    )]
    Url { url: String },
    #[error(
        "{url}: an https RPC needs the node's certificate: pass --rpc-cacert PATH \
         (the node's rpc_tls_cert), or --config with the node's config file"
    )]
    NeedsCaCert { url: String },
    #[error("--rpc-cacert is for an https RPC, and {url} is plain http: use https://")]
    CaCertWithoutTls { url: String },
    #[error("cannot use --rpc-cacert {path}: {why} (the node's rpc_tls_cert: a PEM certificate)")]
    CaCert { path: String, why: String },
    #[error("cannot read the cookie {path}: {source} (is the node running with rpc_listen set?)")]
    Cookie {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{url}: the node serves TLS on this port: use https:// and pass --rpc-cacert PATH \
         (the node's rpc_tls_cert), or --config with the node's config file"
    )]
    ServesTls { url: String },
    #[error("{url}: the node does not speak TLS on this port ({why}): use http://")]
    NotTls { url: String, why: String },
    #[error(
        "{url}: the node's certificate is not trusted by {cacert} ({why}): pass the \
         certificate the node is configured with (its rpc_tls_cert)"
    )]
    CertificateMismatch {
        url: String,
        cacert: String,
        why: String,
    },
    #[error(
        "{url}: the node's certificate is not valid for this host name ({why}): call it \
         by a name or address its certificate holds"
    )]
    NameMismatch { url: String, why: String },
    #[error("{url}: TLS failed: {why}")]
    Tls { url: String, why: String },
    #[error("cannot reach {url}: {why}")]
    Unreachable { url: String, why: String },
    #[error("{url} refused the credentials in {cookie}")]
    Unauthorized { url: String, cookie: String },
    #[error("{url} answered HTTP {status}: {body}")]
    NotJsonRpc {
        url: String,
        status: u16,
        body: String,
    },
}

/// Where a node's RPC is and how to trust it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcTarget {
    pub url: String,
    pub cookie: PathBuf,
    /// The certificate to trust (https only).
    pub cacert: Option<PathBuf>,
}

impl RpcTarget {
    /// The RPC of the node that runs with config file `path`: its
    /// `rpc_listen` (an unspecified address is called on loopback), its
    /// cookie, and, over TLS, its own `rpc_tls_cert` as the only root.
    pub fn from_node_config(path: &Path) -> Result<RpcTarget, ClientError> {
        let cfg = RunArgs {
            config: Some(path.to_path_buf()),
            ..Default::default()
        }
        .resolve()?;
        let mut addr = cfg.rpc_listen.ok_or_else(|| ClientError::RpcOff {
            config: path.display().to_string(),
        })?;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        let (scheme, cacert) = match cfg.rpc_tls {
            Some((cert, _)) => ("https", Some(cert)),
            None => ("http", None),
        };
        Ok(RpcTarget {
            url: format!("{scheme}://{addr}/"),
            cookie: cfg.data_dir.join(".cookie"),
            cacert,
        })
    }
}

/// One node's RPC, ready for calls.
pub struct RpcClient {
    agent: ureq::Agent,
    target: RpcTarget,
    auth: String,
    tls: bool,
}

impl RpcClient {
    /// Reads the cookie and the certificate; `timeout` bounds each call.
    pub fn new(target: RpcTarget, timeout: Duration) -> Result<RpcClient, ClientError> {
        let url = target.url.clone();
        let tls = if url.starts_with("https://") {
            true
        } else if url.starts_with("http://") {
            false
        } else {
            return Err(ClientError::Url { url });
        };
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(timeout));
        match (&target.cacert, tls) {
            (None, true) => return Err(ClientError::NeedsCaCert { url }),
            (Some(_), false) => return Err(ClientError::CaCertWithoutTls { url }),
            (None, false) => {}
            (Some(path), true) => config = config.tls_config(only_root(path)?),
        }
        let secret =
            std::fs::read_to_string(&target.cookie).map_err(|source| ClientError::Cookie {
                path: target.cookie.display().to_string(),
                source,
            })?;
        Ok(RpcClient {
            agent: config.build().into(),
            auth: super::basic_auth(secret.trim()),
            target,
            tls,
        })
    }

    /// Calls `method`: the JSON-RPC result, or the node's JSON-RPC error
    /// object.
    pub fn call(&self, method: &str, params: Value) -> Result<Result<Value, Value>, ClientError> {
        let url = &self.target.url;
        let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let mut resp = self
            .agent
            .post(url)
            .header("Authorization", &self.auth)
            .header("Content-Type", "application/json")
            .send(req.to_string())
            .map_err(|e| self.transport_error(e))?;
        let status = resp.status().as_u16();
        if status == 401 {
            return Err(ClientError::Unauthorized {
                url: url.clone(),
                cookie: self.target.cookie.display().to_string(),
            });
        }
        let body = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| self.transport_error(e))?;
        let v: Value = serde_json::from_str(&body).map_err(|_| ClientError::NotJsonRpc {
            url: url.clone(),
            status,
            body: body.chars().take(200).collect(),
        })?;
        match v.get("error") {
            Some(e) if !e.is_null() => Ok(Err(e.clone())),
            _ => Ok(Ok(v.get("result").cloned().unwrap_or(Value::Null))),
        }
    }

    fn transport_error(&self, e: ureq::Error) -> ClientError {
        let url = self.target.url.clone();
        if let Some(t) = rustls_error(&e) {
            use rustls::CertificateError as C;
            let why = t.to_string();
            return match t {
                rustls::Error::InvalidCertificate(C::NotValidForName)
                | rustls::Error::InvalidCertificate(C::NotValidForNameContext { .. }) => {
                    ClientError::NameMismatch { url, why }
                }
                rustls::Error::InvalidCertificate(_) => ClientError::CertificateMismatch {
                    url,
                    cacert: self
                        .target
                        .cacert
                        .as_deref()
                        .unwrap_or(Path::new("?"))
                        .display()
                        .to_string(),
                    why,
                },
                rustls::Error::InvalidMessage(_) => ClientError::NotTls { url, why },
                _ => ClientError::Tls { url, why },
            };
        }
        if !self.tls && speaks_tls(authority(&url, 80)) {
            return ClientError::ServesTls { url };
        }
        ClientError::Unreachable {
            url,
            why: e.to_string(),
        }
    }
}

/// A TLS config whose only root is the certificate (chain) in `path`.
fn only_root(path: &Path) -> Result<ureq::tls::TlsConfig, ClientError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let bad = |why: String| ClientError::CaCert {
        path: path.display().to_string(),
        why,
    };
    let ders: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if ders.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    // Checked here: the root store would skip one it cannot parse.
    let mut store = rustls::RootCertStore::empty();
    let (_, ignored) = store.add_parsable_certificates(ders.iter().cloned());
    if ignored > 0 {
        return Err(bad(format!("{ignored} certificate(s) in it do not parse")));
    }
    let roots: Vec<ureq::tls::Certificate<'static>> = ders
        .iter()
        .map(|d| ureq::tls::Certificate::from_der(d.as_ref()).to_owned())
        .collect();
    Ok(ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build())
}

/// The rustls error under a ureq error (a handshake failure comes as an
/// I/O error wrapping it).
fn rustls_error(e: &ureq::Error) -> Option<&rustls::Error> {
    match e {
        ureq::Error::Rustls(t) => Some(t),
        ureq::Error::Io(io) => io.get_ref()?.downcast_ref::<rustls::Error>(),
        _ => None,
    }
}

/// `host:port` of `url` (`default_port` when it names none).
fn authority(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or("");
    let has_port = match host.rsplit_once(':') {
        Some((h, p)) => p.parse::<u16>().is_ok() && (!h.starts_with('[') || h.ends_with(']')),
        None => false,
    };
    if has_port {
        host.to_string()
    } else {
        format!("{host}:{default_port}")
    }
}

/// Whether `addr` answers a TLS handshake with a certificate. No root is
/// trusted, so the handshake can only fail; a certificate error says the
/// port speaks TLS.
fn speaks_tls(addr: String) -> bool {
    let Some(a) = addr.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        return false;
    };
    let Ok(mut tcp) = TcpStream::connect_timeout(&a, PROBE_TIMEOUT) else {
        return false;
    };
    let _ = tcp.set_read_timeout(Some(PROBE_TIMEOUT));
    let _ = tcp.set_write_timeout(Some(PROBE_TIMEOUT));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let Ok(builder) =
        rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()
    else {
        return false;
    };
    let cfg = builder
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::IpAddress(a.ip().into());
    let Ok(mut conn) = rustls::ClientConnection::new(Arc::new(cfg), name) else {
        return false;
    };
    while conn.is_handshaking() {
        match conn.complete_io(&mut tcp) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                return matches!(
                    e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
                    Some(rustls::Error::InvalidCertificate(_))
                )
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_takes_the_port_or_the_default() {
        assert_eq!(authority("http://127.0.0.1:24001/", 80), "127.0.0.1:24001");
        assert_eq!(authority("http://node.example", 80), "node.example:80");
        assert_eq!(authority("https://[::1]:8332/x", 443), "[::1]:8332");
        assert_eq!(authority("https://[::1]/", 443), "[::1]:443");
    }

    #[test]
    fn https_needs_a_certificate_and_http_refuses_one() {
        let dir = tempfile::tempdir().unwrap();
        let cookie = dir.path().join(".cookie");
        std::fs::write(&cookie, "__cookie__:x").unwrap();
        let t = |url: &str, cacert: Option<PathBuf>| RpcTarget {
            url: url.into(),
            cookie: cookie.clone(),
            cacert,
        };
        let e = RpcClient::new(t("https://127.0.0.1:1/", None), PROBE_TIMEOUT).err();
        assert!(matches!(e, Some(ClientError::NeedsCaCert { .. })), "{e:?}");
        let pem = dir.path().join("c.pem");
        std::fs::write(&pem, "not a certificate").unwrap();
        let e = RpcClient::new(t("http://127.0.0.1:1/", Some(pem.clone())), PROBE_TIMEOUT).err();
        assert!(
            matches!(e, Some(ClientError::CaCertWithoutTls { .. })),
            "{e:?}"
        );
        let e = RpcClient::new(t("https://127.0.0.1:1/", Some(pem)), PROBE_TIMEOUT).err();
        assert!(matches!(e, Some(ClientError::CaCert { .. })), "{e:?}");
        let e = RpcClient::new(t("127.0.0.1:1", None), PROBE_TIMEOUT).err();
        assert!(matches!(e, Some(ClientError::Url { .. })), "{e:?}");
    }
}

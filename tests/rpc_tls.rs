//! Optional TLS on the RPC port (`rpc_tls_cert`, `rpc_tls_key`): a client
//! that trusts the certificate calls a method over HTTPS; plain HTTP to the
//! same port gets no answer; `time-cli` calls over HTTPS trusting only the
//! node's certificate, and says what is wrong when the certificate or the
//! scheme is; a broken certificate or half a configuration stops the node at
//! start with an error naming the setting.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{Cluster, SERIAL};
use serde_json::Value;
use timecoin::devnet::{DevnetLayout, DevnetSpec};
use timecoin::node::rpc::basic_auth;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// PEM armour (rcgen's own needs a feature the workspace leaves off).
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A self-signed certificate for 127.0.0.1: (cert path, key path, cert DER).
fn certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (dir.join("rpc-cert.pem"), dir.join("rpc-key.pem"));
    std::fs::write(&cert, pem("CERTIFICATE", ck.cert.der())).unwrap();
    std::fs::write(&key, pem("PRIVATE KEY", &ck.signing_key.serialize_der())).unwrap();
    (cert, key, ck.cert.der().to_vec())
}

/// One HTTPS POST of `body`; (status line, body).
async fn https_post(
    addr: std::net::SocketAddr,
    trusted: &[u8],
    auth: &str,
    body: &str,
) -> std::io::Result<(String, String)> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(trusted.to_vec()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    let req = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await; // close_notify or not
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    ))
}

#[test]
fn rpc_over_tls_answers_a_trusting_client_and_not_plain_http() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let certs = tempfile::tempdir().unwrap();
    let (c, _cert, der) = tls_cluster(certs.path());
    let addr = c.layout.rpc[0].unwrap();
    let cookie = std::fs::read_to_string(&c.layout.cookies[0]).unwrap();
    let auth = basic_auth(cookie.trim());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = r#"{"jsonrpc":"2.0","id":3,"method":"getconnectioncount"}"#;
    let (status, reply) = rt.block_on(https_post(addr, &der, &auth, body)).unwrap();
    assert!(status.contains(" 200 "), "{status} {reply}");
    let v: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(v["result"], 2, "{v}");
    // Unauthenticated over TLS: 401 as over HTTP.
    let (status, _) = rt
        .block_on(https_post(addr, &der, "Basic eDp5", body))
        .unwrap();
    assert!(status.contains(" 401 "), "{status}");
    // A client that does not trust the certificate fails its handshake.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    assert!(rt
        .block_on(https_post(addr, other.cert.der(), &auth, body))
        .is_err());
    // Plain HTTP to the TLS port: no JSON-RPC answer.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let plain = agent
        .post(format!("http://{addr}/"))
        .header("Authorization", &auth)
        .send(body.to_string());
    if let Ok(mut r) = plain {
        let text = r.body_mut().read_to_string().unwrap_or_default();
        assert!(!text.contains("\"result\""), "plain HTTP answered: {text}");
    }
}

/// A 3-masternode cluster serving its RPC over TLS with a certificate
/// written into `dir`: the cluster, the certificate's path and its DER.
fn tls_cluster(dir: &std::path::Path) -> (Cluster, std::path::PathBuf, Vec<u8>) {
    let (cert, key, der) = certificate(dir);
    let c = Cluster::start_with(
        3,
        &format!(
            "rpc_tls_cert = \"{}\"\nrpc_tls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    );
    (c, cert, der)
}

/// `time-cli ARGS`: (exit code, stdout, stderr).
fn cli(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    common::time_cli(args)
}

#[test]
fn time_cli_calls_a_tls_node_trusting_only_its_certificate() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let certs = tempfile::tempdir().unwrap();
    let (c, cert, _) = tls_cluster(certs.path());
    let addr = c.layout.rpc[0].unwrap();
    let https = format!("https://{addr}/");
    let cookie = c.layout.cookies[0].as_os_str();
    let os = std::ffi::OsStr::new;
    // From the node's own config: https, trusting its rpc_tls_cert.
    let (code, out, err) = cli(&[
        os("--config"),
        c.layout.node_configs[0].as_os_str(),
        os("getconnectioncount"),
    ]);
    assert_eq!((code, out.trim()), (0, "2"), "{err}");
    // A remote node's way: URL, cookie and --rpc-cacert.
    let (code, out, err) = cli(&[
        os("--rpc"),
        os(&https),
        os("--cookie"),
        cookie,
        os("--rpc-cacert"),
        cert.as_os_str(),
        os("uptime"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.trim().parse::<u64>().is_ok(), "{out}");
    // Another certificate: refused at the handshake, exit 3, named.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let wrong = certs.path().join("other.pem");
    std::fs::write(&wrong, pem("CERTIFICATE", other.cert.der())).unwrap();
    let (code, out, err) = cli(&[
        os("--rpc"),
        os(&https),
        os("--cookie"),
        cookie,
        os("--rpc-cacert"),
        wrong.as_os_str(),
        os("uptime"),
    ]);
    assert_eq!(code, 3, "{out} {err}");
    assert!(
        err.contains("certificate is not trusted") && err.contains("other.pem"),
        "{err}"
    );
    // Plain HTTP to the TLS port: told so, not a raw transport error.
    let (code, _, err) = cli(&[
        os("--rpc"),
        os(&format!("http://{addr}/")),
        os("--cookie"),
        cookie,
        os("uptime"),
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("serves TLS on this port"), "{err}");
    assert!(err.contains("--rpc-cacert"), "{err}");
    // https without a certificate to trust: a usage error.
    let (code, _, err) = cli(&[
        os("--rpc"),
        os(&https),
        os("--cookie"),
        cookie,
        os("uptime"),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("pass --rpc-cacert"), "{err}");
    // https to a plain-HTTP port: told to use http://.
    let plain = c.layout.metrics[0].unwrap();
    let (code, _, err) = cli(&[
        os("--rpc"),
        os(&format!("https://{plain}/")),
        os("--cookie"),
        cookie,
        os("--rpc-cacert"),
        cert.as_os_str(),
        os("uptime"),
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("does not speak TLS"), "{err}");
}

/// A certificate that names another host than the one called: told so. The
/// server is the node's TLS acceptor on a bare listener (the handshake
/// fails before any HTTP).
#[test]
fn time_cli_says_when_the_certificate_names_another_host() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["node.example".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, pem("CERTIFICATE", ck.cert.der())).unwrap();
    std::fs::write(&key, pem("PRIVATE KEY", &ck.signing_key.serialize_der())).unwrap();
    let cookie = dir.path().join(".cookie");
    std::fs::write(&cookie, "__cookie__:x").unwrap();
    let acceptor = timecoin::node::rpc::tls_acceptor(&cert, &key).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let _ = acceptor.accept(s).await;
        }
    });
    let os = std::ffi::OsStr::new;
    let (code, _, err) = cli(&[
        os("--rpc"),
        os(&format!("https://{addr}/")),
        os("--cookie"),
        cookie.as_os_str(),
        os("--rpc-cacert"),
        cert.as_os_str(),
        os("uptime"),
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("not valid for this host name"), "{err}");
}

#[test]
fn a_bad_certificate_or_half_a_tls_config_stops_the_node_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DevnetSpec {
        nodes: 1,
        // A range free now (a random one collided with a port in use).
        base_port: common::free_base_port(DevnetSpec::span_for(1, 2)),
        wallets: 1,
        coins_per_wallet: 1,
        port_stride: 2,
        ..Default::default()
    };
    let l = DevnetLayout::generate(dir.path(), &spec).unwrap();
    let cfg = &l.node_configs[0];
    let base = std::fs::read_to_string(cfg).unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let (_, key, _) = certificate(dir.path());
    let run = |extra: String| {
        std::fs::write(cfg, format!("{base}{extra}")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_time-masternode"))
            .arg("run")
            .arg("--config")
            .arg(cfg)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = run(format!(
        "rpc_tls_cert = \"{}\"\nrpc_tls_key = \"{}\"\n",
        garbage.display(),
        key.display()
    ));
    assert!(
        e.contains("rpc_tls_cert") && e.contains("garbage.pem"),
        "{e}"
    );
    let e = run(format!("rpc_tls_key = \"{}\"\n", key.display()));
    assert!(
        e.contains("rpc_tls_cert and rpc_tls_key go together"),
        "{e}"
    );
}

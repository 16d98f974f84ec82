//! `time-cli`: call a masternode's JSON-RPC from the shell, like `dash-cli`.
//! Finds the RPC and its cookie in the node's config file, a devnet's
//! endpoints.json or flags; calls over HTTPS when the node serves TLS,
//! trusting only the node's certificate. Prints the result as JSON on stdout.
//!
//! Exit codes: 0 result printed; 1 the node answered with a JSON-RPC error
//! (printed as JSON on stderr); 2 bad usage; 3 cannot reach or authenticate
//! to the node.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use timecoin::node::rpc::client::{ClientError, RpcClient, RpcTarget};

#[derive(Parser)]
#[command(
    name = "time-cli",
    version,
    // `help` is the node's method list (as in bitcoin-cli); `--help` and
    // `METHOD --help` are clap's.
    disable_help_subcommand = true,
    about = "Call a TIME Coin masternode's JSON-RPC",
    long_about = "Call a TIME Coin masternode's JSON-RPC. Point it at a node with --config NODE.toml \
                  (its rpc_listen, data directory and rpc_tls_cert), with --rpc and --cookie \
                  (and --rpc-cacert for https), or at a devnet with --devnet DIR --node N \
                  (read from DIR/endpoints.json). Flags override the config file.\n\
                  Exit codes: 0 ok, 1 JSON-RPC error, 2 usage, 3 node unreachable or authentication refused."
)]
struct Cli {
    /// The node's config file: the RPC address, cookie and TLS certificate
    /// are read from it.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// The node's RPC URL, http:// or https:// [default:
    /// http://127.0.0.1:24001/, https:// with --rpc-cacert].
    #[arg(long)]
    rpc: Option<String>,
    /// The node's cookie file (`.cookie` in its data directory).
    #[arg(long)]
    cookie: Option<PathBuf>,
    /// The certificate (PEM) of a node that serves its RPC over TLS: the
    /// node's rpc_tls_cert, trusted as the only root.
    #[arg(long)]
    rpc_cacert: Option<PathBuf>,
    /// A devnet directory: take the RPC URL and cookie from its endpoints.json.
    #[arg(long)]
    devnet: Option<PathBuf>,
    /// Which devnet masternode (with --devnet).
    #[arg(long, default_value_t = 0)]
    node: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make an `rpcauth` credential for the node's config (no node needed):
    /// prints the config line and the password.
    Rpcauth {
        user: String,
        /// The password [default: 32 random bytes in hex].
        password: Option<String>,
    },
    /// List the node's methods.
    Help,
    /// Seconds since the node's RPC server started.
    Uptime,
    /// Banned peer masternodes: key, seconds left, reputation.
    Getbanlist,
    /// Ban a peer masternode ("add", default 600 s) or lift its ban ("remove").
    Setban {
        key: String,
        /// "add" or "remove".
        command: String,
        seconds: Option<u64>,
    },
    /// Network, chain height and tip, finalized payments, catching up.
    Getblockchaininfo,
    /// Height of the last committed block.
    Getblockcount,
    /// Hash of the last committed block.
    Getbestblockhash,
    /// The hash of the committed block at a height.
    Getblockhash { height: u64 },
    /// A committed block: verbosity 0 hex, 1 JSON with txids, 2 JSON with
    /// transactions.
    Getblock {
        blockhash: String,
        #[arg(default_value_t = 1)]
        verbosity: u8,
    },
    /// Block consensus: height, round, leader, sync state, view changes.
    Getconsensusinfo,
    /// Version and peer connections.
    Getnetworkinfo,
    /// Peer masternodes connected.
    Getconnectioncount,
    /// Undecided transactions held.
    Getmempoolinfo,
    /// This masternode's key, peers and counts.
    Masternodestatus,
    /// An output and its state (null if unknown).
    Gettxout { txid: String, vout: u32 },
    /// An address's outputs and their states.
    Listunspent { address: String },
    /// An address's spendable and locked base units.
    Getbalance { address: String },
    /// Submit a signed transaction (hex); prints its txid once locked.
    Sendrawtransaction { hex: String },
    /// Submit (idempotent) and wait for the TimeProof.
    Waittransactionfinality {
        hex: String,
        /// Longest wait in milliseconds.
        timeout_ms: Option<u64>,
    },
    /// A transaction's hex by txid (--verbose: its inputs and outputs too).
    Getrawtransaction {
        txid: String,
        #[arg(long)]
        verbose: bool,
    },
    /// A transaction, its state here (final, pending, rejected with the
    /// reason) and its TimeProof's summary (voters, weight, quorum).
    Gettransaction { txid: String },
    /// A final transaction's TimeProof: hex and voters, verifiable offline
    /// against the genesis registry.
    Gettimeproof { txid: String },
    /// Txids pending here (--verbose: with the count).
    Getrawmempool {
        #[arg(long)]
        verbose: bool,
    },
    /// Peer masternodes: address, tier, connected, reputation, ban.
    Getpeerinfo,
    /// Every registered masternode, with the registry's epoch and quorum.
    Masternodelist,
    /// Lift a peer masternode's ban.
    Unban { key: String },
    /// Stop the masternode cleanly (as SIGTERM does).
    Stop,
}

impl Cmd {
    fn call(&self) -> (&'static str, Vec<Value>) {
        match self {
            Cmd::Rpcauth { .. } => unreachable!("answered locally"),
            Cmd::Help => ("help", vec![]),
            Cmd::Uptime => ("uptime", vec![]),
            Cmd::Getbanlist => ("getbanlist", vec![]),
            Cmd::Setban {
                key,
                command,
                seconds,
            } => {
                let mut p = vec![json!(key), json!(command)];
                if let Some(s) = seconds {
                    p.push(json!(s));
                }
                ("setban", p)
            }
            Cmd::Getblockchaininfo => ("getblockchaininfo", vec![]),
            Cmd::Getblockcount => ("getblockcount", vec![]),
            Cmd::Getbestblockhash => ("getbestblockhash", vec![]),
            Cmd::Getblockhash { height } => ("getblockhash", vec![json!(height)]),
            Cmd::Getblock {
                blockhash,
                verbosity,
            } => ("getblock", vec![json!(blockhash), json!(verbosity)]),
            Cmd::Getconsensusinfo => ("getconsensusinfo", vec![]),
            Cmd::Getnetworkinfo => ("getnetworkinfo", vec![]),
            Cmd::Getconnectioncount => ("getconnectioncount", vec![]),
            Cmd::Getmempoolinfo => ("getmempoolinfo", vec![]),
            Cmd::Masternodestatus => ("masternodestatus", vec![]),
            Cmd::Gettxout { txid, vout } => ("gettxout", vec![json!(txid), json!(vout)]),
            Cmd::Listunspent { address } => ("listunspent", vec![json!(address)]),
            Cmd::Getbalance { address } => ("getbalance", vec![json!(address)]),
            Cmd::Sendrawtransaction { hex } => ("sendrawtransaction", vec![json!(hex)]),
            Cmd::Waittransactionfinality { hex, timeout_ms } => {
                let mut p = vec![json!(hex)];
                if let Some(t) = timeout_ms {
                    p.push(json!(t));
                }
                ("waittransactionfinality", p)
            }
            Cmd::Getrawtransaction { txid, verbose } => {
                ("getrawtransaction", vec![json!(txid), json!(verbose)])
            }
            Cmd::Gettransaction { txid } => ("gettransaction", vec![json!(txid)]),
            Cmd::Gettimeproof { txid } => ("gettimeproof", vec![json!(txid)]),
            Cmd::Getrawmempool { verbose } => ("getrawmempool", vec![json!(verbose)]),
            Cmd::Getpeerinfo => ("getpeerinfo", vec![]),
            Cmd::Masternodelist => ("masternodelist", vec![]),
            Cmd::Unban { key } => ("unban", vec![json!(key)]),
            Cmd::Stop => ("stop", vec![]),
        }
    }
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(code)
}

fn endpoints(dir: &std::path::Path, node: usize) -> Result<(String, PathBuf), String> {
    let p = dir.join("endpoints.json");
    let text = std::fs::read_to_string(&p)
        .map_err(|e| format!("cannot read {}: {e} (start the devnet first)", p.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
    let n = &v["masternodes"][node];
    let url = n["rpc_url"].as_str().ok_or_else(|| {
        format!(
            "{}: masternode {node} has no rpc_url (devnet made before RPC: restart it with --fresh)",
            p.display()
        )
    })?;
    let cookie = n["cookie"]
        .as_str()
        .ok_or("endpoints.json lacks a cookie path")?;
    Ok((url.to_string(), PathBuf::from(cookie)))
}

fn main() -> ExitCode {
    // Like any Unix tool, end quietly when the reader of stdout goes away
    // (`... | head`) instead of panicking in println!. Safe here: this
    // program's sockets are Rust std/mio ones, which write with
    // MSG_NOSIGNAL, so only stdout/stderr can raise SIGPIPE.
    // SAFETY: signal(2) with SIG_DFL at start, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if let Cmd::Rpcauth { user, password } = &cli.cmd {
        if user.is_empty() || user.contains(':') {
            return fail(2, "the user name must be non-empty and without ':'");
        }
        let password = password
            .clone()
            .unwrap_or_else(|| hex::encode(rand::random::<[u8; 32]>()));
        let (_, line) = timecoin::node::rpc::RpcAuth::generate(user, &password);
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "rpcauth": line,
                "config_line": format!("rpcauth = [\"{line}\"]"),
                "password": password,
            }))
            .unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    let target = match target(&cli) {
        Ok(t) => t,
        Err(e) => return fail(2, e),
    };
    let client = match RpcClient::new(target, Duration::from_secs(75)) {
        Ok(c) => c,
        Err(e @ ClientError::Cookie { .. }) => return fail(3, e),
        Err(e) => return fail(2, e),
    };
    let (method, params) = cli.cmd.call();
    match client.call(method, Value::Array(params)) {
        Ok(Ok(result)) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&result).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("{}", serde_json::to_string_pretty(&e).unwrap_or_default());
            ExitCode::from(1)
        }
        Err(e) => fail(3, e),
    }
}

/// Where to call: a devnet's endpoints, else the config file, with the
/// flags over either.
fn target(cli: &Cli) -> Result<RpcTarget, String> {
    let base = match (&cli.devnet, &cli.config) {
        (Some(_), Some(_)) => return Err("pass --devnet or --config, not both".into()),
        (Some(d), None) => {
            let (url, cookie) = endpoints(d, cli.node)?;
            Some(RpcTarget {
                url,
                cookie,
                cacert: None,
            })
        }
        (None, Some(c)) => Some(RpcTarget::from_node_config(c).map_err(|e| e.to_string())?),
        (None, None) => None,
    };
    let cacert = cli
        .rpc_cacert
        .clone()
        .or(base.as_ref().and_then(|b| b.cacert.clone()));
    let url = cli
        .rpc
        .clone()
        .or(base.as_ref().map(|b| b.url.clone()))
        .unwrap_or_else(|| {
            let scheme = if cacert.is_some() { "https" } else { "http" };
            format!("{scheme}://127.0.0.1:24001/")
        });
    let cookie = cli.cookie.clone().or(base.map(|b| b.cookie)).ok_or(
        "no credentials: pass --config NODE.toml, --cookie DATA_DIR/.cookie or --devnet DIR",
    )?;
    Ok(RpcTarget {
        url,
        cookie,
        cacert,
    })
}

//! `--devnet N`: a local devnet on 127.0.0.1 whose masternodes are child
//! processes of this tool (the real `time-masternode run`), stopped when the
//! [`LocalDevnet`] is dropped: at the end, on error, on Ctrl-C, and (through
//! the parent-death signal) if this process is killed.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use timecoin::devnet::{DevnetLayout, DevnetSpec};
use timecoin::node::genesis_file::genesis_outpoint;
use timecoin::node::keyfile::KeyFile;
use timecoin::wallet::WalletClient;

use crate::plan::{Coin, COIN_SIZE};
use crate::procstat::Watched;
use crate::AnyError;

pub struct DevnetOpts {
    pub nodes: usize,
    pub wallets: usize,
    pub coins: usize,
    pub dir: PathBuf,
    pub base_port: Option<u16>,
    pub masternode_bin: PathBuf,
    pub node_args: Vec<String>,
}

pub struct LocalDevnet {
    pub layout: DevnetLayout,
    children: Vec<(usize, Child)>,
}

/// A run of `n` consecutive free ports on 127.0.0.1. Free when checked;
/// another process could still take one before the masternodes bind it,
/// which shows up as a masternode that exits at start.
pub fn free_port_range(n: usize) -> Result<u16, AnyError> {
    for _ in 0..64 {
        let base = 20_000 + (rand::random::<u16>() % 40_000);
        // TCP and UDP: the devnet's nodes use both (QUIC, fast path, pool).
        let ok = (0..n).all(|i| {
            let port = base + i as u16;
            TcpListener::bind(("127.0.0.1", port)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        });
        if ok {
            return Ok(base);
        }
    }
    Err(format!("found no {n} consecutive free ports on 127.0.0.1; pass --base-port").into())
}

/// The masternode binary: `--masternode-bin`, or `time-masternode` next to
/// this executable (both are built into the same target directory).
pub fn find_masternode_bin(given: Option<PathBuf>) -> Result<PathBuf, AnyError> {
    if let Some(p) = given {
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("--masternode-bin {}: no such file", p.display()).into())
        };
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().ok_or("executable has no directory")?;
    // Test binaries run from target/<profile>/deps.
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let p = d.join("time-masternode");
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(format!(
        "time-masternode not found next to {}; build it first (cargo build --release --workspace) or pass --masternode-bin",
        exe.display()
    )
    .into())
}

impl LocalDevnet {
    /// Generates a fresh devnet in `opts.dir` and starts its masternodes.
    /// Call from the main thread: the children's parent-death signal is
    /// tied to the thread that spawns them.
    pub fn start(opts: &DevnetOpts) -> Result<LocalDevnet, AnyError> {
        if opts.dir.join("genesis.json").exists() {
            return Err(format!(
                "{} already holds a devnet; the load test needs a fresh directory",
                opts.dir.display()
            )
            .into());
        }
        let base_port = match opts.base_port {
            Some(p) => p,
            // Node i listens on base + 2i and base + 2i + 1 (the devnet's
            // port stride is 2), then the multicast port, then the metrics
            // and RPC ports (`DevnetSpec::span_for`).
            None => free_port_range(DevnetSpec::span_for(opts.nodes, 2))?,
        };
        let spec = DevnetSpec {
            nodes: opts.nodes,
            base_port,
            wallets: opts.wallets,
            coins_per_wallet: opts.coins.div_ceil(opts.wallets).max(1) as u32,
            coin_amount: COIN_SIZE,
            ..Default::default()
        };
        let layout = DevnetLayout::generate(&opts.dir, &spec)?;
        let mut dn = LocalDevnet {
            layout,
            children: Vec::new(),
        };
        for (i, cfg) in dn.layout.node_configs.iter().enumerate() {
            let log = std::fs::File::create(cfg.with_file_name("node.log"))?;
            let mut cmd = Command::new(&opts.masternode_bin);
            cmd.arg("run")
                .arg("--config")
                .arg(cfg)
                .args(&opts.node_args)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    // Own process group: a terminal's Ctrl-C reaches this
                    // tool, which then stops the masternodes in order.
                    libc::setpgid(0, 0);
                    // Die with the load test, even if it is killed.
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
            let child = cmd
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", opts.masternode_bin.display()))?;
            dn.children.push((i, child));
        }
        Ok(dn)
    }

    pub fn watched(&self) -> Vec<Watched> {
        self.children
            .iter()
            .map(|(i, c)| Watched {
                name: format!("masternode {i}"),
                pid: c.id(),
            })
            .collect()
    }

    /// Any masternode that has exited, with its status.
    pub fn exited(&mut self) -> Option<String> {
        for (i, c) in &mut self.children {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(format!(
                    "masternode {i} exited ({st}); see {}",
                    self.layout.node_configs[*i]
                        .with_file_name("node.log")
                        .display()
                ));
            }
        }
        None
    }

    /// Waits until every masternode answers and is linked to all its peers.
    pub async fn wait_ready(&mut self, limit: Duration, stop: &AtomicBool) -> Result<(), AnyError> {
        let deadline = Instant::now() + limit;
        let want = self.layout.endpoints.len().saturating_sub(1) as u32;
        let endpoints = self.layout.endpoints.clone();
        for e in endpoints {
            loop {
                if let Some(x) = self.exited() {
                    return Err(x.into());
                }
                if stop.load(Ordering::Relaxed) {
                    return Err("interrupted".into());
                }
                let r = async {
                    let mut c = WalletClient::connect(e, self.layout.chain_id).await?;
                    Ok::<_, AnyError>(c.status().await?)
                }
                .await;
                match r {
                    Ok(s) if s.peers_connected >= want && !s.catching_up => break,
                    _ if Instant::now() > deadline => {
                        return Err(format!(
                            "masternode {e} not linked to all its peers within {limit:?}; logs in {}/mn*/node.log",
                            self.layout.dir.display()
                        )
                        .into())
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
        Ok(())
    }

    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.layout.endpoints
    }

    /// The funded wallets' keys and their genesis coins.
    pub fn funds(&self) -> Result<(Vec<SigningKey>, Vec<Coin>), AnyError> {
        let genesis = timecoin::node::genesis_file::GenesisFile::load(&self.layout.genesis)?;
        let mut keys = Vec::new();
        let mut coins = Vec::new();
        for (w, path) in self.layout.wallet_keys.iter().enumerate() {
            keys.push(KeyFile::load(path)?);
            let a = &genesis.allocations[w];
            coins.extend((0..a.count).map(|c| Coin {
                outpoint: genesis_outpoint(w as u32, c),
                amount: a.amount,
                key: w,
            }));
        }
        Ok((keys, coins))
    }

    /// SIGTERM to every masternode, then SIGKILL to those still running
    /// after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        for (_, c) in &self.children {
            // SAFETY: kill(2) on a pid this process spawned and has not
            // reaped yet, so the pid cannot have been reused.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + grace;
        for (i, c) in &mut self.children {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        eprintln!("masternode {i} did not stop on SIGTERM; killing it");
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
        self.children.clear();
    }
}

impl Drop for LocalDevnet {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

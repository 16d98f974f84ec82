//! `time-masternode`: run a TIME Coin masternode, or a local devnet.

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use timecoin::devnet::{DevnetLayout, DevnetSpec};
use timecoin::node::config::RunArgs;
use timecoin::node::Node;
use timecoin::wallet::WalletClient;

#[derive(Parser)]
#[command(
    name = "time-masternode",
    version,
    about = "TIME Coin masternode: instant-finality UTXO payments",
    long_about = "Runs a TIME Coin masternode (`run`), or a local testnet of several masternodes on 127.0.0.1 (`devnet`, the default)."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one masternode until Ctrl-C or SIGTERM.
    Run(Box<RunArgs>),
    /// Start a local testnet on 127.0.0.1 with funded wallets; Ctrl-C stops it.
    Devnet(DevnetArgs),
    /// Print a running masternode's status.
    Status {
        /// The masternode's P2P address.
        #[arg(long, default_value = "127.0.0.1:24200")]
        node: std::net::SocketAddr,
        /// Chain id (printed by `devnet`; in the genesis file).
        #[arg(long)]
        chain_id: u32,
    },
    /// List the equivocation evidence a masternode kept (two contradicting
    /// signed votes by one masternode), read from its data directory. Safe
    /// while the masternode runs (LMDB readers do not block it).
    Evidence {
        /// The masternode's data directory (its `db` is inside).
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Resume block processing after a committed block contradicted a
    /// payment final here (the stop is durable). Run it with the masternode
    /// stopped; it prints the contradiction it clears. See docs/OPERATING.md.
    ClearBlockStop {
        /// The masternode's data directory (its `db` is inside).
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(clap::Args, Clone)]
struct DevnetArgs {
    /// Number of masternodes.
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// Directory for keys, genesis, configs, databases and logs. An existing
    /// devnet there is restarted with its state.
    #[arg(long, default_value = "devnet-data")]
    data_dir: PathBuf,
    /// First P2P port; masternode i listens on base+2i (base+2i+1 is left
    /// for its TCP peer pool, `--node-arg --peer-transport=tcp`).
    #[arg(long, default_value_t = 24200)]
    base_port: u16,
    /// Funded wallets to create.
    #[arg(long, default_value_t = 4)]
    wallets: usize,
    /// Funding outputs per wallet (each 1000 TIME).
    #[arg(long, default_value_t = 100)]
    coins: u32,
    /// Delete an existing devnet in the directory first.
    #[arg(long)]
    fresh: bool,
    /// Generate the files and exit without starting anything.
    #[arg(long)]
    init_only: bool,
    /// Stop by itself after this many seconds (for scripts).
    #[arg(long)]
    exit_after: Option<u64>,
    /// Extra flags passed to every masternode (e.g. --unsafe-no-sync).
    #[arg(long, allow_hyphen_values = true)]
    node_arg: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cmd = cli.cmd.unwrap_or(Cmd::Devnet(DevnetArgs {
        nodes: 4,
        data_dir: "devnet-data".into(),
        base_port: 24200,
        wallets: 4,
        coins: 100,
        fresh: false,
        init_only: false,
        exit_after: None,
        node_arg: vec![],
    }));
    let result = match cmd {
        Cmd::Run(args) => run(*args),
        Cmd::Devnet(args) => devnet(args),
        Cmd::Status { node, chain_id } => status(node, chain_id),
        Cmd::Evidence { data_dir } => evidence(&data_dir),
        Cmd::ClearBlockStop { data_dir } => clear_block_stop(&data_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// `println!` that does not panic when stdout is gone (`... | head`): the
/// output is dropped and the command goes on (a devnet keeps its
/// masternodes running and stops them cleanly later).
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

fn runtime() -> Result<tokio::runtime::Runtime, AnyError> {
    runtime_with(None)
}

/// The node's runtime with `workers` threads (default: one per core).
fn runtime_with(workers: Option<usize>) -> Result<tokio::runtime::Runtime, AnyError> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        b.worker_threads(n);
    }
    Ok(b.enable_all().thread_name("net").build()?)
}

fn run(args: RunArgs) -> Result<(), AnyError> {
    let cfg = args.resolve()?;
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if cfg.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(false)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let rt = runtime_with(Some(cfg.net_threads))?;
    rt.block_on(async move {
        let node = Node::start(cfg).await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        // A core that ended (a storage failure) is noticed within a second;
        // everything else that stops the node wakes this loop itself.
        let mut check = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = node.stop_requested() => break,
                _ = check.tick() => if node.core_finished() { break },
            }
        }
        tracing::info!("stopping");
        node.shutdown()?;
        Ok::<(), AnyError>(())
    })?;
    Ok(())
}

/// The masternode's database in `data_dir`, which must exist. With the
/// masternode stopped (its lock free), the write-ahead log is replayed into
/// the database first, as a start would; while it runs (`evidence` only,
/// `need_stopped` false) the database is read as it is, which may lag the
/// running node by the rounds its store writer has not applied yet.
fn open_db(
    data_dir: &std::path::Path,
    need_stopped: bool,
) -> Result<timecoin::storage::LmdbStore, AnyError> {
    let db = data_dir.join("db");
    if !db.exists() {
        return Err(format!(
            "no database at {}: pass the masternode's --data-dir",
            db.display()
        )
        .into());
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data_dir.join("masternode.lock"))?;
    if lock.try_lock().is_err() {
        if need_stopped {
            return Err(format!(
                "a masternode is running on {}: stop it first",
                data_dir.display()
            )
            .into());
        }
        say!("the masternode is running: records it has not yet applied to its database are not shown");
        return Ok(timecoin::storage::LmdbStore::open(&db, Default::default())?);
    }
    let wal = timecoin::storage::store_writer::wal_dir(data_dir);
    let (store, _) = timecoin::storage::store_writer::recover(&db, &wal, Default::default())?;
    Ok(store)
}

fn clear_block_stop(data_dir: &std::path::Path) -> Result<(), AnyError> {
    let mut store = open_db(data_dir, true)?;
    match store.clear_block_stop()? {
        None => say!("block processing is not stopped: nothing to clear"),
        Some(stop) => say!(
            "cleared the block stop ({stop}); the next start of this masternode processes \
             blocks again"
        ),
    }
    Ok(())
}

fn evidence(data_dir: &std::path::Path) -> Result<(), AnyError> {
    use timecoin::storage::Store;
    let store = open_db(data_dir, false)?;
    if let Some(stop) = store.block_stop()? {
        say!("block processing stopped: {stop}");
    }
    let all = store.evidence()?;
    say!("{} equivocation record(s)", all.len());
    for e in all {
        say!(
            "voter {} on {}: {:?} then {:?}",
            e.voter(),
            e.txid,
            e.first.decision,
            e.second.decision
        );
    }
    let approvals = store.approval_evidence()?;
    say!("{} conflicting-approvals record(s)", approvals.len());
    for e in approvals {
        say!(
            "voter {} approved {} and {}, which both spend {}",
            e.voter(),
            e.first_tx.txid(),
            e.second_tx.txid(),
            e.outpoint
        );
    }
    let blocks = store.block_evidence()?;
    say!("{} block evidence record(s)", blocks.len());
    for e in blocks {
        use timecoin_core::blocks::BlockEvidence;
        let k = e.key();
        let what = match &e {
            BlockEvidence::DoubleProposal { first, second } => {
                format!("two proposals: {} and {}", first.block, second.block)
            }
            BlockEvidence::DoubleVote { first, second } => format!(
                "two {:?}s: {:?} and {:?}",
                first.kind, first.block, second.block
            ),
            BlockEvidence::ConflictingProposal { tx, final_tx, .. } => format!(
                "proposed {} which conflicts with final payment {}",
                tx.txid(),
                final_tx
            ),
        };
        say!(
            "{} at height {} round {}: {}",
            k.signer,
            k.height,
            k.round,
            what
        );
    }
    Ok(())
}

fn status(node: std::net::SocketAddr, chain_id: u32) -> Result<(), AnyError> {
    runtime()?.block_on(async move {
        let mut c = WalletClient::connect(node, chain_id).await?;
        let s = c.status().await?;
        say!(
            "masternode {}\n  peers connected {}/{}\n  pending {}\n  finalized {}\n  rejected {}",
            s.public_key,
            s.peers_connected,
            s.peers_total,
            s.pending,
            s.finalized,
            s.rejected
        );
        if s.catching_up {
            println!("  catching up with peers (approves nothing until it has)");
        }
        match s.blocks {
            None => println!("  blocks off (block_interval_ms = 0)"),
            Some(b) => {
                let age = if b.tip_time_ms == 0 {
                    "genesis".to_string()
                } else {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    format!(
                        "{:.1} s ago",
                        now.saturating_sub(b.tip_time_ms) as f64 / 1e3
                    )
                };
                println!(
                    "  height {}\n  tip {}\n  last block {}\n  sync {}\n  unconfirmed {}",
                    b.height,
                    b.tip,
                    age,
                    if b.syncing { "syncing" } else { "synced" },
                    b.unconfirmed
                );
            }
        }
        Ok(())
    })
}

struct Children(Vec<(usize, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, c) in &self.0 {
            // SAFETY: plain kill(2) on a pid this process spawned and still owns.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (i, c) in &mut self.0 {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        eprintln!("masternode {i} did not stop; killing it");
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
    }
}

fn devnet(args: DevnetArgs) -> Result<(), AnyError> {
    let spec = DevnetSpec {
        nodes: args.nodes,
        base_port: args.base_port,
        wallets: args.wallets,
        coins_per_wallet: args.coins,
        ..Default::default()
    };
    if args.nodes == 0 {
        return Err("--nodes must be at least 1".into());
    }
    if args.fresh && args.data_dir.join("genesis.json").exists() {
        std::fs::remove_dir_all(&args.data_dir)?;
    }
    let layout = DevnetLayout::open_or_generate(&args.data_dir, &spec)?;
    // One devnet per directory; held until this process ends.
    let _lock = lock_devnet(&layout.dir)?;
    if args.init_only {
        say!("devnet files in {}", layout.dir.display());
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let mut children = Children(Vec::new());
    for (i, cfg) in layout.node_configs.iter().enumerate() {
        let log_path = cfg.with_file_name("node.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let child = Command::new(&exe)
            .arg("run")
            .arg("--config")
            .arg(cfg)
            .args(&args.node_arg)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        children.0.push((i, child));
    }
    let rt = runtime()?;
    let ok = rt.block_on(wait_connected(&layout, Duration::from_secs(30)));
    // Answers may come from another process on these ports: every one of
    // ours must still be running.
    for (i, c) in &mut children.0 {
        if let Ok(Some(st)) = c.try_wait() {
            let log = layout.node_configs[*i].with_file_name("node.log");
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let last = tail
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Err(format!(
                "masternode {i} exited at start ({st}): {last}\n(see {})",
                log.display()
            )
            .into());
        }
    }
    if let Err(e) = ok {
        eprintln!(
            "devnet did not come up: {e}; see {}/mn*/node.log",
            layout.dir.display()
        );
        return Err(e);
    }
    say!(
        "TIME Coin devnet is up: {} masternodes, chain id {}",
        layout.endpoints.len(),
        layout.chain_id
    );
    for (i, e) in layout.endpoints.iter().enumerate() {
        say!(
            "  masternode {i}: {e}   log: {}",
            layout.node_configs[i].with_file_name("node.log").display()
        );
        match layout.metrics.get(i).copied().flatten() {
            Some(m) => say!("    metrics: http://{m}/metrics"),
            None => {
                say!("    metrics: off (devnet made before metrics; --fresh turns them on)")
            }
        }
    }
    say!(
        "endpoints of every masternode: {}",
        layout.dir.join("endpoints.json").display()
    );
    say!("genesis: {}", layout.genesis.display());
    say!("funded wallets:");
    for w in &layout.wallet_keys {
        say!("  {}", w.display());
    }
    if let (Some(w0), Some(w1)) = (layout.wallet_keys.first(), layout.wallet_keys.get(1)) {
        say!("pay 1.5 TIME from wallet0 to wallet1:");
        say!(
            "  cargo run --release --bin time-wallet -- send --key {} --genesis {} --node {} --to $(cargo run -q --release --bin time-wallet -- address --key {}) --amount 1.5",
            w0.display(),
            layout.genesis.display(),
            layout.endpoints[0],
            w1.display()
        );
    }
    say!("Ctrl-C stops the devnet.");
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let limit = async {
            match args.exit_after {
                Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
                None => std::future::pending().await,
            }
        };
        let mut check = tokio::time::interval(Duration::from_millis(500));
        tokio::pin!(limit);
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = &mut limit => break,
                _ = check.tick() => {
                    for (i, c) in &mut children.0 {
                        if let Ok(Some(st)) = c.try_wait() {
                            return Err::<(), AnyError>(format!(
                                "masternode {i} exited ({st}); stopping the devnet; see {}",
                                layout.node_configs[*i].with_file_name("node.log").display()
                            )
                            .into());
                        }
                    }
                }
            }
        }
        Ok(())
    })?;
    say!("stopping masternodes");
    drop(children);
    Ok(())
}

/// Takes `dir/devnet.lock`, or says a devnet runs there already.
fn lock_devnet(dir: &std::path::Path) -> Result<std::fs::File, AnyError> {
    let path = dir.join("devnet.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    if f.try_lock().is_err() {
        return Err(format!(
            "a devnet is already running in {}: stop it first (Ctrl-C where it runs), \
             or start another with --data-dir OTHER_DIR --base-port OTHER_PORT",
            dir.display()
        )
        .into());
    }
    Ok(f)
}

async fn wait_connected(layout: &DevnetLayout, limit: Duration) -> Result<(), AnyError> {
    let deadline = Instant::now() + limit;
    let want = layout.endpoints.len().saturating_sub(1) as u32;
    for e in &layout.endpoints {
        loop {
            let r = async {
                let mut c = WalletClient::connect(*e, layout.chain_id).await?;
                Ok::<_, AnyError>(c.status().await?)
            }
            .await;
            match r {
                Ok(s) if s.peers_connected >= want && !s.catching_up => break,
                _ if Instant::now() > deadline => {
                    return Err(
                        format!("masternode {e} not connected to all peers in {limit:?}").into(),
                    )
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    Ok(())
}

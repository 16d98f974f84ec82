//! `time-loadtest`: open-loop payment load against TIME Coin masternodes.
//!
//! It starts a local devnet (`--devnet N`) or drives an existing network
//! (`--targets`), sends pre-signed payments at a fixed rate (some of them as
//! conflicting pairs sent at the same moment to two masternodes), and
//! measures, for every transaction, the time from submission to the
//! masternode's TimeProof or rejection. Traffic goes only to 127.0.0.1 (its
//! own devnet) or to the given targets, and every run is bounded in count
//! and time.

mod audit;
mod devnet;
mod drive;
mod html;
mod plan;
mod procstat;
mod report;
mod split;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ed25519_dalek::SigningKey;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use timecoin::node::genesis_file::GenesisFile;
use timecoin::node::keyfile::KeyFile;
use timecoin::protocol::types::{Address, PublicKey};

use crate::devnet::{DevnetOpts, LocalDevnet};
use crate::drive::{DriveOpts, VerifyProofs};
use crate::plan::{Coin, PlanInput, Profile};
use crate::procstat::Watched;
use crate::report::{Percentiles, StepDetail, StepResult};

pub type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// Every payment is a pre-signed transaction in memory and a coin in the
/// devnet's genesis: a run stays below this.
const MAX_PAYMENTS: usize = 5_000_000;

#[derive(Parser, Debug)]
#[command(
    name = "time-loadtest",
    version,
    about = "Open-loop payment load against TIME Coin masternodes, with finality latency in an HDR histogram",
    long_about = "Sends pre-signed payments at a fixed rate (after a linear ramp) over several wallet \
connections, optionally turning a share of them into conflicting pairs sent at the same moment to two \
different masternodes, and measures each transaction from submission to TimeProof or rejection.\n\n\
Either --devnet N (a local devnet on 127.0.0.1, started and stopped by this tool; needs the \
time-masternode binary next to this one, e.g. `cargo build --release --workspace`) or --targets with \
--genesis and --wallet (an existing network).\n\n\
After each step every masternode is asked for the state of the spent coins (all pairs, refused \
payments, a sample of finalized ones) to check that they agree.\n\n\
Exit status: 0 ok; 1 error or a masternode exited; 2 conflicting transactions both finalized \
(a pair's two sides, or different spenders final on different masternodes); 3 payments were lost \
(not with --find-max, where loss ends the search); 130 interrupted."
)]
struct Cli {
    /// Start a local devnet of N masternodes on 127.0.0.1 and stop it afterwards.
    #[arg(
        long,
        value_name = "N",
        conflicts_with = "targets",
        required_unless_present = "targets"
    )]
    devnet: Option<usize>,
    /// Drive an existing network: masternode wallet ports, HOST:PORT,...
    #[arg(long, value_delimiter = ',', requires_all = ["genesis", "wallet"])]
    targets: Vec<String>,
    /// The network's genesis file (with --targets).
    #[arg(long)]
    genesis: Option<PathBuf>,
    /// Funded wallet key file(s) (with --targets); their coins are split into payment coins.
    #[arg(long, value_delimiter = ',')]
    wallet: Vec<PathBuf>,
    /// Payments per second once ramped up (with --find-max: the first step).
    #[arg(long, default_value_t = 1000.0)]
    tps: f64,
    /// Time at full rate (with --find-max: per step), e.g. 10s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Linear ramp from 0 to the rate before the full-rate phase.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    ramp_up: Duration,
    /// Wallet connections, spread over the masternodes [default: 2 per masternode].
    #[arg(long)]
    connections: Option<usize>,
    /// Share of payments, in percent, sent as two conflicting transactions
    /// (same coin, different recipients) at the same moment to two masternodes.
    #[arg(long, default_value_t = 0.0)]
    double_spend_pct: f64,
    /// A transaction without TimeProof or rejection this long after its
    /// submission counts as lost.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// After a step's last outcome, keep watching this long for blocks to
    /// confirm its payments (`confirmed` in the report; 0s: do not watch).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    confirm_wait: Duration,
    /// Step the rate up (x --step-factor from --tps, up to --max-tps) until
    /// p99 finality exceeds --p99-bound-ms, payments are lost or the rate is
    /// not sustained; report the highest sustained rate.
    #[arg(long)]
    find_max: bool,
    /// Highest rate --find-max tries.
    #[arg(long, default_value_t = 20_000.0)]
    max_tps: f64,
    /// Rate multiplier between --find-max steps.
    #[arg(long, default_value_t = 1.5)]
    step_factor: f64,
    /// p99 finality above this ends --find-max.
    #[arg(long, default_value_t = 1000.0)]
    p99_bound_ms: f64,
    /// Most steps of --find-max.
    #[arg(long, default_value_t = 12)]
    max_steps: usize,
    /// Write the summary (sent, finalized, rejected, lost, double_spend_pairs,
    /// double_spend_both_finalized, tps, finality_ms) as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write everything (every step, reasons, processes, time series) as JSON.
    #[arg(long)]
    json_detail: Option<PathBuf>,
    /// Write a self-contained HTML report with plots.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Devnet directory (must not hold a devnet) [default: a fresh temporary
    /// directory, removed after a clean run, kept when something failed].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Keep the temporary devnet directory (keys, databases, node logs).
    #[arg(long)]
    keep_data: bool,
    /// First P2P port of the devnet [default: a free range].
    #[arg(long)]
    base_port: Option<u16>,
    /// The masternode binary [default: time-masternode next to this binary].
    #[arg(long)]
    masternode_bin: Option<PathBuf>,
    /// Extra flag for every devnet masternode, e.g. --node-arg=--unsafe-no-sync.
    #[arg(long, allow_hyphen_values = true)]
    node_arg: Vec<String>,
    /// Funded wallets in the devnet's genesis (payment coins are spread over them).
    #[arg(long, default_value_t = 8)]
    wallets: usize,
    /// Verify every TimeProof received (always done for double-spend sides).
    #[arg(long)]
    verify_proofs: bool,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// "10s", "250ms", "2m", "1.5s" or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10s, 500ms or 2m"))?;
    if !(0.0..=86_400.0).contains(&(v * mul)) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(v * mul))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// The step rates: one, or the --find-max ladder.
fn step_rates(cli: &Cli) -> Vec<f64> {
    if !cli.find_max {
        return vec![cli.tps];
    }
    let mut v = vec![cli.tps];
    while v.len() < cli.max_steps.max(1) {
        let last = *v.last().expect("non-empty");
        if last >= cli.max_tps {
            break;
        }
        v.push((last * cli.step_factor).round().min(cli.max_tps));
    }
    v
}

fn check(cli: &Cli) -> Result<(), AnyError> {
    if !(cli.tps > 0.0 && cli.tps.is_finite()) {
        return Err("--tps must be positive".into());
    }
    if cli.duration.is_zero() {
        return Err("--duration must be positive".into());
    }
    if !(0.0..=100.0).contains(&cli.double_spend_pct) {
        return Err("--double-spend-pct must be within 0..=100".into());
    }
    if cli.find_max && (cli.step_factor <= 1.0 || cli.max_tps < cli.tps) {
        return Err("--find-max needs --step-factor > 1 and --max-tps >= --tps".into());
    }
    if cli.devnet == Some(0) || cli.wallets == 0 || cli.threads == 0 {
        return Err("--devnet, --wallets and --threads must be at least 1".into());
    }
    if cli.connections == Some(0) {
        return Err("--connections must be at least 1".into());
    }
    for (flag, path) in [
        ("--json", &cli.json),
        ("--json-detail", &cli.json_detail),
        ("--html", &cli.html),
    ] {
        if let Some(p) = path {
            check_output_dir(flag, p)?;
        }
    }
    let masternodes = cli.devnet.unwrap_or(cli.targets.len());
    if cli.double_spend_pct > 0.0 && (masternodes < 2 || connections(cli, masternodes) < 2) {
        return Err("--double-spend-pct needs at least 2 masternodes and 2 connections".into());
    }
    Ok(())
}

/// A report path whose directory is missing fails now, not after the run.
fn check_output_dir(flag: &str, p: &std::path::Path) -> Result<(), AnyError> {
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "{flag} {}: directory {} does not exist; create it first or choose another path",
            p.display(),
            dir.display()
        )
        .into());
    }
    Ok(())
}

fn connections(cli: &Cli, masternodes: usize) -> usize {
    cli.connections.unwrap_or(2 * masternodes)
}

/// Keeps or removes the temporary devnet directory when dropped.
struct DataDir {
    tmp: Option<tempfile::TempDir>,
    path: PathBuf,
    keep: bool,
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if let Some(t) = self.tmp.take() {
            if self.keep {
                let p = t.keep();
                eprintln!("devnet files and masternode logs kept in {}", p.display());
            }
        }
    }
}

/// Where the load goes.
struct Network {
    endpoints: Vec<SocketAddr>,
    chain_id: u32,
    registry: Arc<timecoin::protocol::registry::Registry>,
    keys: Vec<SigningKey>,
    coins: Vec<Coin>,
    description: String,
}

fn signal_task(rt: &tokio::runtime::Runtime, stop: Arc<AtomicBool>) {
    rt.spawn(async move {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        for n in 0.. {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if n == 0 {
                eprintln!("\nstopping: no more payments; masternodes will be stopped (again to quit at once)");
                stop.store(true, Ordering::SeqCst);
            } else {
                // Masternodes get SIGTERM through their parent-death signal.
                std::process::exit(130);
            }
        }
    });
}

/// The devnet's crypto bound on this machine: payments/s if every core did
/// nothing but verify signatures.
struct CryptoBound {
    /// Signatures per CPU second, batch verification, one thread.
    per_core: f64,
    cores: usize,
    masternodes: usize,
    /// Signature checks per payment across the devnet.
    sigs_per_payment: f64,
    tps: f64,
}

impl CryptoBound {
    fn describe(&self) -> String {
        format!(
            "crypto bound: {:.0} payments/s = {} cores x {:.0} signatures/s per core (ZIP 215 \
             batches of 64, measured now) / {:.1} signature checks per payment ({} masternodes x \
             1 input signature; vote batch signatures, shared by many payments, left out)",
            self.tps, self.cores, self.per_core, self.sigs_per_payment, self.masternodes
        )
    }
}

fn crypto_bound(masternodes: usize) -> CryptoBound {
    let net = time_bench::Network::new(4, 512);
    let txs = net.payments(512, 1);
    let sigs = time_bench::input_signatures(&txs);
    let rates = time_bench::measure_crypto(&sigs, 64, Duration::from_millis(600));
    let per_core = rates.batch_verify.per_s_cpu();
    let cores = std::thread::available_parallelism().map_or(1, |p| p.get());
    let sigs_per_payment = masternodes.max(1) as f64;
    CryptoBound {
        per_core,
        cores,
        masternodes,
        sigs_per_payment,
        tps: per_core * cores as f64 / sigs_per_payment,
    }
}

fn run(cli: Cli) -> Result<ExitCode, AnyError> {
    check(&cli)?;
    let rates = step_rates(&cli);
    let profiles: Vec<Profile> = rates
        .iter()
        .map(|&rate| Profile {
            rate,
            ramp: cli.ramp_up,
            steady: cli.duration,
        })
        .collect();
    let needed: usize = profiles.iter().map(|p| p.payments()).sum();
    if needed == 0 {
        return Err("the rate and duration make no payment".into());
    }
    if needed > MAX_PAYMENTS {
        return Err(format!(
            "{needed} payments planned; the limit is {MAX_PAYMENTS} (lower --tps, --duration or --max-tps)"
        )
        .into());
    }
    // Measured before any masternode runs, so the machine is quiet.
    let bound = crypto_bound(cli.devnet.unwrap_or(cli.targets.len()));
    eprintln!("{}", bound.describe());
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads)
        .enable_all()
        .thread_name("loadtest")
        .build()?;
    signal_task(&rt, stop.clone());

    // Declared before the devnet so it is dropped after the masternodes stop.
    let mut data_dir = DataDir {
        tmp: None,
        path: PathBuf::new(),
        keep: true,
    };
    let mut local: Option<LocalDevnet> = None;
    let mut watched = Vec::new();
    let net = if let Some(nodes) = cli.devnet {
        let bin = devnet::find_masternode_bin(cli.masternode_bin.clone())?;
        match &cli.data_dir {
            Some(d) => data_dir.path = d.clone(),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("time-loadtest-")
                    .tempdir()?;
                data_dir.path = t.path().to_path_buf();
                data_dir.tmp = Some(t);
            }
        }
        eprintln!(
            "starting a devnet of {nodes} masternodes in {} ({needed} payment coins in genesis)",
            data_dir.path.display()
        );
        let mut dn = LocalDevnet::start(&DevnetOpts {
            nodes,
            wallets: cli.wallets,
            coins: needed,
            dir: data_dir.path.clone(),
            base_port: cli.base_port,
            masternode_bin: bin,
            node_args: cli.node_arg.clone(),
        })?;
        rt.block_on(dn.wait_ready(Duration::from_secs(60), &stop))?;
        let (keys, coins) = dn.funds()?;
        let genesis = GenesisFile::load(&dn.layout.genesis)?.to_genesis()?;
        watched = dn.watched();
        let n = Network {
            endpoints: dn.endpoints().to_vec(),
            chain_id: dn.layout.chain_id,
            registry: Arc::new(genesis.registry),
            keys,
            coins,
            description: format!("local devnet of {nodes} masternodes (127.0.0.1)"),
        };
        local = Some(dn);
        n
    } else {
        let mut endpoints = Vec::new();
        for t in &cli.targets {
            let addr = t
                .to_socket_addrs()
                .map_err(|e| format!("target {t}: {e}"))?
                .next()
                .ok_or_else(|| format!("target {t} resolves to no address"))?;
            endpoints.push(addr);
        }
        let gpath = cli.genesis.as_ref().ok_or("--targets needs --genesis")?;
        let gfile = GenesisFile::load(gpath)?;
        let genesis = gfile.to_genesis()?;
        let mut keys = Vec::new();
        for w in &cli.wallet {
            keys.push(KeyFile::load(w)?);
        }
        // Payment coins belong to a key made for this run, so the funded
        // wallets keep only their large coins.
        let run_key = keys.len();
        keys.push(KeyFile::generate());
        eprintln!("splitting the funded wallets' coins into {needed} payment coins");
        let coins = rt.block_on(split::prepare(
            endpoints[0],
            genesis.chain_id,
            &keys,
            run_key,
            needed,
            &stop,
        ))?;
        Network {
            description: format!("existing network: {}", cli.targets.join(", ")),
            endpoints,
            chain_id: genesis.chain_id,
            registry: Arc::new(genesis.registry),
            keys,
            coins,
        }
    };
    watched.push(Watched {
        name: "time-loadtest".into(),
        pid: std::process::id(),
    });

    let targets = net.endpoints.len();
    let connections = connections(&cli, targets);
    let pair_fraction = cli.double_spend_pct / 100.0;
    let conn_target = plan::connection_targets(connections, targets);
    let sink = |_| Address::from_public_key(&PublicKey::from_signing(&KeyFile::generate()));
    let recipients = [sink(0), sink(1)];
    let sampler = procstat::Sampler::start(watched.clone(), Duration::from_millis(500));
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
    if !bar.is_hidden() {
        bar.enable_steady_tick(Duration::from_millis(100));
    }
    let mut opts = DriveOpts {
        endpoints: net.endpoints.clone(),
        conn_target: conn_target.clone(),
        chain_id: net.chain_id,
        registry: net.registry.clone(),
        verify: if cli.verify_proofs {
            VerifyProofs::All
        } else {
            VerifyProofs::Pairs
        },
        timeout: cli.timeout,
        stop: stop.clone(),
        progress: bar.clone(),
        label: String::new(),
        confirm_wait: cli.confirm_wait,
    };

    let mut steps: Vec<(StepResult, Option<String>)> = Vec::new();
    let mut best: Option<usize> = None;
    let mut used = 0usize;
    let mut node_failure = None;
    for (k, profile) in profiles.iter().enumerate() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let n = profile.payments();
        say(
            &bar,
            format!(
                "step {}/{}: signing {n} payments at {:.0}/s",
                k + 1,
                profiles.len(),
                profile.rate
            ),
        );
        let plan = Arc::new(plan::build(PlanInput {
            profile: *profile,
            coins: &net.coins[used..used + n],
            keys: &net.keys,
            recipients,
            chain_id: net.chain_id,
            conn_target: &conn_target,
            pair_fraction,
            threads: std::thread::available_parallelism().map_or(2, |p| p.get()),
        }));
        used += n;
        say(
            &bar,
            format!(
                "  {} transactions signed ({} conflicting pairs)",
                plan.subs.len(),
                plan.pairs
            ),
        );
        opts.label = format!("[{:.0}/s]", profile.rate);
        let load_average = procstat::load_average();
        let before = procstat::snapshot(&watched);
        let observed = rt.block_on(drive::run_step(plan.clone(), &opts))?;
        let after = procstat::snapshot(&watched);
        let usage = procstat::usage(&watched, &before, &after);
        let mut snaps = vec![before.clone()];
        snaps.extend(sampler.between(before.at, after.at));
        // The masternodes' own view of the coins, once their last rounds
        // have gone out.
        let audit = (!observed.interrupted).then(|| {
            std::thread::sleep(Duration::from_secs(1));
            rt.block_on(audit::run(
                &net.endpoints,
                net.chain_id,
                audit::select(&plan, &observed),
            ))
        });
        let machine = procstat::machine_cpu_pct(&before, &after);
        snaps.push(after);
        let mut result = report::analyze(&plan, &observed, cli.timeout, usage, &snaps);
        result.machine_cpu_pct = machine;
        result.load_average = load_average;
        result.audit = audit;
        if let Some(dn) = local.as_mut() {
            node_failure = dn.exited();
        }
        let verdict = cli
            .find_max
            .then(|| verdict(&result, &plan, cli.p99_bound_ms));
        let ok = verdict.as_deref() == Some("sustained");
        let title = format!(
            "step {}/{}{}",
            k + 1,
            profiles.len(),
            verdict
                .as_deref()
                .map(|v| format!(": {v}"))
                .unwrap_or_default()
        );
        result.crypto_bound_tps = Some(bound.tps);
        bar.suspend(|| print!("{}", report::text(&result, &title, &watched)));
        steps.push((result, verdict));
        if ok {
            best = Some(k);
        }
        if let Some(f) = &node_failure {
            say(&bar, format!("stopping: {f}"));
            break;
        }
        if cli.find_max && !ok {
            break;
        }
    }
    bar.finish_and_clear();
    drop(sampler);
    // Stop the masternodes before writing anything: the devnet is done.
    drop(local.take());
    if steps.is_empty() {
        return Err("interrupted before any step ran".into());
    }

    let report_idx = if cli.find_max {
        best.unwrap_or(0)
    } else {
        steps.len() - 1
    };
    let summary = &steps[report_idx].0;
    if cli.find_max {
        match best {
            Some(b) => println!(
                "highest sustained rate: {:.0} payments/s ({:.1} finalized/s, p99 {:.2} ms)",
                steps[b].0.target_tps,
                steps[b].0.tps,
                Percentiles::of(&steps[b].0.finality).p99
            ),
            None => println!("no step was sustained (the first one already failed)"),
        }
    }
    if let Some(p) = &cli.json {
        let j = serde_json::to_string_pretty(&report::JsonSummary::of(summary))?;
        std::fs::write(p, j + "\n").map_err(|e| format!("{}: {e}", p.display()))?;
    }
    let setup: Vec<(String, String)> = vec![
        ("network".into(), net.description.clone()),
        (
            "masternodes".into(),
            net.endpoints
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("wallet connections".into(), connections.to_string()),
        (
            "double-spend share".into(),
            format!("{}% of payments", cli.double_spend_pct),
        ),
        ("lost after".into(), format!("{:?}", cli.timeout)),
        ("masternode flags".into(), cli.node_arg.join(" ")),
        (
            "cores on this machine".into(),
            std::thread::available_parallelism().map_or("?".into(), |p| p.to_string()),
        ),
        (
            "command".into(),
            std::env::args().collect::<Vec<_>>().join(" "),
        ),
    ];
    if let Some(p) = &cli.json_detail {
        let d = serde_json::json!({
            "setup": setup.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "find_max": cli.find_max,
            "highest_sustained_tps": best.map(|b| steps[b].0.target_tps),
            "summary_step": report_idx,
            "steps": steps.iter().map(|(r, v)| StepDetail::of(r, v.clone())).collect::<Vec<_>>(),
        });
        std::fs::write(p, serde_json::to_string_pretty(&d)? + "\n")
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if let Some(p) = &cli.html {
        let title = if cli.find_max {
            "TIME Coin load test: highest sustained rate".to_string()
        } else {
            format!("TIME Coin load test: {:.0} payments/s", cli.tps)
        };
        let h = html::render(&title, &setup, &steps, best, &watched);
        std::fs::write(p, h).map_err(|e| format!("{}: {e}", p.display()))?;
    }

    let unsafe_pairs: u64 = steps
        .iter()
        .map(|s| {
            s.0.double_spend_both_finalized + s.0.audit.as_ref().map_or(0, |a| a.conflicting())
        })
        .sum();
    let interrupted = stop.load(Ordering::Relaxed);
    let code = if unsafe_pairs > 0 {
        eprintln!(
            "SAFETY FAILURE: {unsafe_pairs} coins with two conflicting transactions finalized"
        );
        2
    } else if node_failure.is_some() {
        1
    } else if interrupted {
        130
    } else if !cli.find_max && summary.lost > 0 {
        3
    } else {
        0
    };
    // Keep the masternode logs when something went wrong.
    data_dir.keep = cli.keep_data || (code != 0 && code != 130) || summary.lost > 0 && !interrupted;
    Ok(ExitCode::from(code))
}

/// A line above the progress line, or on stderr when there is none.
fn say(bar: &ProgressBar, msg: String) {
    if bar.is_hidden() {
        eprintln!("{msg}");
    } else {
        bar.println(msg);
    }
}

/// Whether a --find-max step sustained its rate.
fn verdict(r: &StepResult, plan: &plan::StepPlan, p99_bound_ms: f64) -> String {
    let p99 = Percentiles::of(&r.finality).p99;
    let planned_tx_rate = r.target_tps * plan.subs.len() as f64 / plan.payments.max(1) as f64;
    // Payments that can finalize: all but the pairs whose both sides lost.
    let finalizable = r
        .payments
        .saturating_sub(r.double_spend_both_rejected as usize) as f64
        / r.payments.max(1) as f64;
    if r.double_spend_both_finalized > 0 || r.audit.as_ref().is_some_and(|a| a.conflicting() > 0) {
        "FAILED: conflicting transactions both finalized".into()
    } else if r.lost > 0 {
        format!("not sustained: {} lost", r.lost)
    } else if r.interrupted {
        "interrupted".into()
    } else if r.rejected_single > 0 {
        format!(
            "not sustained: {} plain payments refused ({})",
            r.rejected_single,
            r.reasons
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else if p99 > p99_bound_ms {
        format!("not sustained: p99 {p99:.1} ms > {p99_bound_ms} ms")
    } else if r.offered_tps < 0.95 * planned_tx_rate {
        format!(
            "not sustained: the load generator sent only {:.0} of {:.0} transactions/s",
            r.offered_tps, planned_tx_rate
        )
    } else if r.tps < 0.9 * r.target_tps * finalizable {
        format!(
            "not sustained: {:.0} finalized/s for {:.0} offered",
            r.tps, r.target_tps
        )
    } else {
        "sustained".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn find_max_ladder_is_bounded() {
        let cli = Cli::parse_from([
            "t",
            "--devnet",
            "4",
            "--find-max",
            "--tps",
            "1000",
            "--max-tps",
            "5000",
        ]);
        assert_eq!(
            step_rates(&cli),
            vec![1000.0, 1500.0, 2250.0, 3375.0, 5000.0]
        );
        let cli = Cli::parse_from(["t", "--devnet", "4", "--tps", "10"]);
        assert_eq!(step_rates(&cli), vec![10.0]);
    }
}

//! `time-wallet`: keys, balances and instant-finality payments.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use timecoin::node::genesis_file::GenesisFile;
use timecoin::node::keyfile::KeyFile;
use timecoin::protocol::message::Message;
use timecoin::protocol::types::{Address, PublicKey, COIN};
use timecoin::wallet::{format_amount, parse_amount, Outcome, WalletClient};

#[derive(Parser)]
#[command(
    name = "time-wallet",
    version,
    about = "TIME Coin wallet: keys, balances, instant-finality payments"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Net {
    /// Masternode to talk to (its P2P port): host:port, e.g.
    /// 127.0.0.1:24200 or localhost:24200.
    #[arg(long, default_value = "127.0.0.1:24200", value_parser = parse_node)]
    node: SocketAddr,
    /// Genesis file of the network (gives the chain id and the registry
    /// used to verify TimeProofs).
    #[arg(long, default_value = "devnet-data/genesis.json")]
    genesis: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a new key file (mode 0600).
    Keygen {
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the address of a key file.
    Address {
        #[arg(long)]
        key: PathBuf,
    },
    /// Show spendable and locked coins of an address.
    Balance {
        /// Key file whose address to query.
        #[arg(long, conflicts_with = "address")]
        key: Option<PathBuf>,
        /// Address to query.
        #[arg(long)]
        address: Option<String>,
        #[command(flatten)]
        net: Net,
    },
    /// Pay an address and wait for finality (TimeProof) or rejection.
    Send {
        #[arg(long)]
        key: PathBuf,
        /// Recipient address (time1...).
        #[arg(long)]
        to: String,
        /// Amount in TIME, e.g. 1.5 (8 decimals at most).
        #[arg(long, allow_hyphen_values = true)]
        amount: String,
        /// Fee in TIME [default: the 0.01 TIME minimum].
        #[arg(long, default_value = "0.01", allow_hyphen_values = true)]
        fee: String,
        /// How long to wait for an outcome, in seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Spend exactly these coins, TXID:VOUT (repeatable) [default: the
        /// wallet picks unspent coins].
        #[arg(long = "coin", value_parser = parse_coin)]
        coins: Vec<timecoin::protocol::types::OutPoint>,
        /// After finality, also wait (up to --timeout) until a block
        /// confirms the payment, and print its height (exit status 4 if none
        /// did in time).
        #[arg(long)]
        confirm: bool,
        #[command(flatten)]
        net: Net,
    },
    /// Print payments touching an address as they become final.
    Watch {
        #[arg(long, conflicts_with = "address")]
        key: Option<PathBuf>,
        #[arg(long)]
        address: Option<String>,
        /// Stop after this many seconds [default: run until Ctrl-C].
        #[arg(long)]
        seconds: Option<u64>,
        #[command(flatten)]
        net: Net,
    },
}

type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// Whether `addr` spent in `tx` (then its outputs to `addr` are change),
/// and what `tx` pays `addr`.
fn watch_line_amounts(tx: &timecoin::protocol::types::Transaction, addr: &Address) -> (bool, u64) {
    let sent = tx
        .inputs
        .iter()
        .any(|i| Address::from_public_key(&i.public_key) == *addr);
    let to_addr = tx
        .outputs
        .iter()
        .filter(|o| o.address == *addr)
        .map(|o| o.amount)
        .sum();
    (sent, to_addr)
}

/// Polls the payment's first input until a committed block confirms it
/// (`Confirmed{txid, height}`), and prints the height.
async fn confirmation(
    c: &mut WalletClient,
    tx: &timecoin::protocol::types::Transaction,
    start: Instant,
    wait: Duration,
) -> Result<ExitCode, AnyError> {
    use timecoin::protocol::utxo::UtxoState;
    let txid = tx.txid();
    let Some(input) = tx.inputs.first() else {
        return Ok(ExitCode::SUCCESS);
    };
    let deadline = Instant::now() + wait;
    loop {
        let st = c.utxo_states(vec![input.prev]).await?;
        if let Some(UtxoState::Confirmed { txid: t, height }) =
            st.first().and_then(|(_, e)| e.map(|e| e.state))
        {
            if t == txid {
                println!(
                    "confirmed in block {height}, {:.1} s after it was sent",
                    start.elapsed().as_secs_f64()
                );
                return Ok(ExitCode::SUCCESS);
            }
        }
        if Instant::now() >= deadline {
            println!(
                "final, but no block confirmed it within --timeout (the block layer may be \
                 stalled or off: `time-masternode status` shows its height and sync state)"
            );
            return Ok(ExitCode::from(4));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `TXID:VOUT`.
fn parse_coin(s: &str) -> Result<timecoin::protocol::types::OutPoint, String> {
    let bad = || format!("{s:?} is not a coin: give TXID:VOUT (64 hex digits, a colon, a number)");
    let (t, v) = s.split_once(':').ok_or_else(bad)?;
    Ok(timecoin::protocol::types::OutPoint {
        txid: t.parse().map_err(|_| bad())?,
        vout: v.parse().map_err(|_| bad())?,
    })
}

/// `host:port`, resolved (a name like `localhost` too); IPv4 first, as
/// masternodes listen on IPv4 by default.
fn parse_node(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| format!("{s:?} is not host:port ({e}); e.g. 127.0.0.1:24200"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
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
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn address_arg(key: Option<PathBuf>, address: Option<String>) -> Result<Address, AnyError> {
    match (key, address) {
        (Some(k), _) => Ok(Address::from_public_key(&PublicKey::from_signing(
            &KeyFile::load(&k)?,
        ))),
        (None, Some(a)) => Ok(a.parse()?),
        (None, None) => Err("give --key or --address".into()),
    }
}

fn run(cli: Cli) -> Result<ExitCode, AnyError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Keygen { out } => {
            if out.exists() {
                return Err(format!("{} exists; not overwriting a key", out.display()).into());
            }
            let k = KeyFile::generate();
            KeyFile::save(&k, &out)?;
            println!("{}", Address::from_public_key(&PublicKey::from_signing(&k)));
        }
        Cmd::Address { key } => {
            let k = KeyFile::load(&key)?;
            println!("{}", Address::from_public_key(&PublicKey::from_signing(&k)));
        }
        Cmd::Balance { key, address, net } => {
            let addr = address_arg(key, address)?;
            let g = GenesisFile::load(&net.genesis)?;
            let registry = g.to_genesis()?.registry;
            rt.block_on(async {
                let mut c =
                    WalletClient::connect_registered(net.node, g.chain_id, &registry).await?;
                let coins = c.utxos(addr).await?;
                let (mut spendable, mut locked) = (0u64, 0u64);
                for (_, e) in &coins {
                    match e.state {
                        timecoin::protocol::utxo::UtxoState::Unspent => {
                            spendable += e.output.amount
                        }
                        _ => locked += e.output.amount,
                    }
                }
                println!("address   {addr}");
                println!(
                    "spendable {} TIME in {} coins",
                    format_amount(spendable),
                    coins.len()
                );
                println!(
                    "locked    {} TIME (pending payments)",
                    format_amount(locked)
                );
                Ok::<_, AnyError>(())
            })?;
        }
        Cmd::Send {
            key,
            to,
            amount,
            fee,
            timeout,
            coins,
            confirm,
            net,
        } => {
            let key = KeyFile::load(&key)?;
            let to: Address = to.parse()?;
            let amount = parse_amount(&amount)?;
            if amount == 0 {
                return Err("--amount 0: give a positive amount in TIME, e.g. 1.5".into());
            }
            let fee = parse_amount(&fee).map_err(|e| format!("--fee: {e}"))?;
            let min_fee = timecoin::protocol::validation::Limits::default().min_fee;
            if fee < min_fee {
                return Err(format!(
                    "fee {} TIME is below the network's minimum {} TIME: raise --fee (or leave it out to pay the minimum)",
                    format_amount(fee),
                    format_amount(min_fee)
                )
                .into());
            }
            let g = GenesisFile::load(&net.genesis)?;
            let genesis = g.to_genesis()?;
            return rt.block_on(async {
                let mut c =
                    WalletClient::connect_registered(net.node, g.chain_id, &genesis.registry)
                        .await?;
                let tx = if coins.is_empty() {
                    c.build_payment(&key, to, amount, fee).await?
                } else {
                    c.build_payment_from(&key, &coins, to, amount, fee).await?
                };
                let txid = tx.txid();
                println!("txid {txid}");
                let start = Instant::now();
                let outcome = c.submit(&tx, Duration::from_secs(timeout)).await?;
                let ms = start.elapsed().as_secs_f64() * 1e3;
                match outcome {
                    Outcome::Finalized { proof, .. } => {
                        let weight = proof.verify(g.chain_id, &genesis.registry)?;
                        println!(
                            "finalized in {ms:.1} ms: TimeProof with {} votes, weight {weight} of {} (quorum {}), verified",
                            proof.votes.len(),
                            genesis.registry.total_weight(),
                            genesis.registry.quorum()
                        );
                        println!("paid {} TIME to {to}", format_amount(amount));
                        if confirm {
                            let left = Duration::from_secs(timeout).saturating_sub(start.elapsed());
                            return confirmation(&mut c, &tx, start, left).await;
                        }
                        Ok(ExitCode::SUCCESS)
                    }
                    Outcome::Rejected { reason, detail, rejecters } => {
                        println!("rejected in {ms:.1} ms: {} (code {}): {detail}", reason.describe(), reason.code());
                        for (k, r) in rejecters {
                            println!("  masternode {k}: {}", r.describe());
                        }
                        Ok(ExitCode::from(2))
                    }
                }
            });
        }
        Cmd::Watch {
            key,
            address,
            seconds,
            net,
        } => {
            let addr = address_arg(key, address)?;
            let g = GenesisFile::load(&net.genesis)?;
            let registry = g.to_genesis()?.registry;
            rt.block_on(async {
                let mut c =
                    WalletClient::connect_registered(net.node, g.chain_id, &registry).await?;
                c.send(&Message::WalletSubscribe(vec![addr])).await?;
                println!("watching {addr} (Ctrl-C to stop)");
                let until = seconds.map(|s| Instant::now() + Duration::from_secs(s));
                loop {
                    let left = until
                        .map(|u| u.saturating_duration_since(Instant::now()))
                        .unwrap_or(Duration::from_secs(3600));
                    if left.is_zero() {
                        break;
                    }
                    // A silent session is closed by the masternode after
                    // its idle timeout (300 s): ping while nothing arrives.
                    match c.recv_timeout(left.min(Duration::from_secs(60))).await {
                        Ok(Message::NewTransactionNotification { txid, tx }) => {
                            let (sent, received) = watch_line_amounts(&tx, &addr);
                            if sent {
                                // Our own payment: what is back is change.
                                let paid: u64 = tx
                                    .outputs
                                    .iter()
                                    .filter(|o| o.address != addr)
                                    .map(|o| o.amount)
                                    .sum();
                                println!(
                                    "final: {txid}  sent {} TIME from this address ({} TIME change back)",
                                    format_amount(paid),
                                    format_amount(received)
                                );
                            } else {
                                println!(
                                    "final: {txid}  {} TIME received by this address",
                                    format_amount(received)
                                );
                            }
                        }
                        Ok(Message::UtxoStateNotification { outpoint, entry }) => {
                            println!(
                                "  {outpoint}: {} TIME, {}",
                                format_amount(entry.output.amount),
                                entry.state.name()
                            );
                        }
                        Ok(_) => {}
                        Err(timecoin::wallet::ClientError::Timeout(_)) => {
                            c.send(&Message::Ping(0)).await?;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok::<_, AnyError>(())
            })?;
        }
    }
    let _ = COIN;
    Ok(ExitCode::SUCCESS)
}

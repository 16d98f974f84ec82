//! A 4-masternode cluster of real processes on 127.0.0.1 for integration tests.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use time_net::{FrameReader, FrameWriter};
use timecoin::devnet::{DevnetLayout, DevnetSpec};
use timecoin::node::genesis_file::{genesis_outpoint, GenesisFile};
use timecoin::node::keyfile::KeyFile;
use timecoin::protocol::message::{sign_handshake, Hello, Message, Role, Side, PROTOCOL_VERSION};
use timecoin::protocol::registry::Registry;
use timecoin::protocol::types::{Address, OutPoint, PublicKey, Transaction, TxOutput, COIN};
use timecoin::protocol::utxo::UtxoEntry;
use timecoin::wallet::WalletClient;
use tokio::net::TcpStream;

/// Integration tests share two cores: one cluster at a time.
pub static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub layout: DevnetLayout,
    pub registry: Registry,
    pub children: Vec<Option<Child>>,
}

pub fn free_base_port(n: usize) -> u16 {
    for _ in 0..200 {
        let base = 20000 + (rand::random::<u16>() % 30000);
        let ok = (0..=n).all(|i| TcpListener::bind(("127.0.0.1", base + i as u16)).is_ok());
        if ok {
            return base;
        }
    }
    panic!("no free port range found");
}

impl Cluster {
    pub fn start(n: usize) -> Cluster {
        Self::start_with(n, "")
    }

    /// A cluster whose node.toml files get `extra` appended (e.g. another
    /// peer transport). Ports are spaced by 2 so the TCP pool fits.
    pub fn start_with(n: usize, extra: &str) -> Cluster {
        Self::start_funded(n, extra, 4, 200)
    }

    /// [`Cluster::start_with`] with `wallets` funded wallets of
    /// `coins_per_wallet` genesis coins of 1000 TIME each.
    pub fn start_funded(n: usize, extra: &str, wallets: usize, coins_per_wallet: u32) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let spec = DevnetSpec {
            nodes: n,
            base_port: free_base_port(DevnetSpec::span_for(n, 2)),
            wallets,
            coins_per_wallet,
            port_stride: 2,
            ..Default::default()
        };
        let layout = DevnetLayout::generate(dir.path(), &spec).unwrap();
        for cfg in &layout.node_configs {
            let text = std::fs::read_to_string(cfg).unwrap();
            // Lines of `extra` replace the same keys.
            let keys: Vec<&str> = extra
                .lines()
                .filter_map(|l| l.split('=').next())
                .map(str::trim)
                .collect();
            let mut out: String = text
                .lines()
                .filter(|l| !keys.contains(&l.split('=').next().unwrap_or("").trim()))
                .map(|l| format!("{l}\n"))
                .collect();
            out.push_str(extra);
            std::fs::write(cfg, out).unwrap();
        }
        let registry = GenesisFile::load(&layout.genesis)
            .unwrap()
            .to_genesis()
            .unwrap()
            .registry;
        let mut c = Cluster {
            dir,
            layout,
            registry,
            children: (0..n).map(|_| None).collect(),
        };
        for i in 0..n {
            c.spawn(i);
        }
        c.wait_connected(n);
        c
    }

    pub fn spawn(&mut self, i: usize) {
        assert!(self.children[i].is_none());
        let cfg = &self.layout.node_configs[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(cfg.with_file_name("node.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_time-masternode"))
            .arg("run")
            .arg("--config")
            .arg(cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn time-masternode");
        self.children[i] = Some(child);
    }

    /// SIGKILL: no clean shutdown, no chance to flush anything.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.layout.endpoints[i]
    }

    pub fn chain_id(&self) -> u32 {
        self.layout.chain_id
    }

    pub fn wallet_key(&self, i: usize) -> SigningKey {
        KeyFile::load(&self.layout.wallet_keys[i]).unwrap()
    }

    pub fn masternode_key(&self, i: usize) -> SigningKey {
        KeyFile::load(&self.layout.node_configs[i].with_file_name("key.json")).unwrap()
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.layout.node_configs[i].with_file_name("node.log"))
            .unwrap_or_default()
    }

    pub async fn client(&self, i: usize) -> WalletClient {
        WalletClient::connect(self.addr(i), self.chain_id())
            .await
            .unwrap()
    }

    /// Waits until each running masternode has `n - 1` authenticated links.
    pub fn wait_connected(&self, up: usize) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 0..self.children.len() {
            if self.children[i].is_none() {
                continue;
            }
            loop {
                let st = rt.block_on(async {
                    let mut c = WalletClient::connect(self.addr(i), self.chain_id())
                        .await
                        .ok()?;
                    c.status().await.ok()
                });
                if st.is_some_and(|s| s.peers_connected as usize >= up - 1 && !s.catching_up) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "masternode {i} did not connect; log:\n{}",
                    self.log(i)
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Polls the state of `op` at masternode `i` until `pred` holds.
    pub async fn wait_state(
        &self,
        i: usize,
        op: OutPoint,
        pred: impl Fn(Option<UtxoEntry>) -> bool,
    ) -> Option<UtxoEntry> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut c = self.client(i).await;
        loop {
            let st = c.utxo_states(vec![op]).await.unwrap()[0].1;
            if pred(st) || Instant::now() > deadline {
                return st;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn address(k: &SigningKey) -> Address {
    Address::from_public_key(&PublicKey::from_signing(k))
}

/// Wallet `w` pays `amount` of its genesis coin `coin` to `to`, change back.
pub fn pay(
    chain: u32,
    from: &SigningKey,
    w: u32,
    coin: u32,
    to: Address,
    amount: u64,
) -> Transaction {
    Transaction::build_signed(
        chain,
        from,
        &[genesis_outpoint(w, coin)],
        vec![
            TxOutput {
                amount,
                address: to,
            },
            TxOutput {
                amount: 1_000 * COIN - amount - COIN / 100,
                address: address(from),
            },
        ],
    )
}

/// A raw masternode-role connection (for Byzantine and garbage tests).
/// A raw node-TCP connection that sends a masternode-role `Hello` and, if
/// answered, a dialer proof: what a masternode dialing the P2P TCP port
/// would do. The port serves wallets only and refuses it (`PEER_POOL_ONLY`).
pub struct RawMasternode {
    pub reader: FrameReader<tokio::net::tcp::OwnedReadHalf>,
    pub writer: FrameWriter<tokio::net::tcp::OwnedWriteHalf>,
}

impl RawMasternode {
    /// Tries to handshake as the masternode holding `key`; `Err` if the
    /// node answers with no `Hello` (e.g. an `Error` refusal).
    pub async fn connect(
        addr: SocketAddr,
        chain: u32,
        key: &SigningKey,
    ) -> std::io::Result<RawMasternode> {
        let s = TcpStream::connect(addr).await?;
        let (r, w) = s.into_split();
        let mut p = RawMasternode {
            reader: FrameReader::new(r, 1 << 20),
            writer: FrameWriter::new(w),
        };
        let ours = Hello {
            chain_id: chain,
            protocol_version: PROTOCOL_VERSION,
            role: Role::Masternode,
            public_key: PublicKey::from_signing(key),
            nonce: rand::random(),
        };
        p.writer
            .send(&Message::Hello(ours.clone()).to_bytes())
            .await
            .map_err(std::io::Error::other)?;
        let their =
            match Message::decode(p.reader.read_frame().await.map_err(std::io::Error::other)?) {
                Ok(Message::Hello(h)) => h,
                _ => return Err(std::io::Error::other("no hello")),
            };
        let _auth = p.reader.read_frame().await.map_err(std::io::Error::other)?;
        p.writer
            .send(&Message::HelloAuth(sign_handshake(key, Side::Dialer, &ours, &their)).to_bytes())
            .await
            .map_err(std::io::Error::other)?;
        Ok(p)
    }

    pub async fn send(&mut self, m: &Message) {
        self.writer.send(&m.to_bytes()).await.unwrap();
    }
}

pub fn data_dir(c: &Cluster, i: usize) -> PathBuf {
    c.layout.node_configs[i].with_file_name("data")
}

/// A coin's state with `Confirmed{txid, ..}` shown as `SpentFinalized{txid}`:
/// "final by txid", whether or not a block has confirmed it yet (blocks
/// run every second on the devnet).
pub fn final_view(e: Option<UtxoEntry>) -> Option<timecoin::protocol::utxo::UtxoState> {
    use timecoin::protocol::utxo::UtxoState;
    e.map(|e| match e.state {
        UtxoState::Confirmed { txid, .. } => UtxoState::SpentFinalized { txid },
        s => s,
    })
}

/// Runs `time-cli ARGS` with no stdin: (exit code, stdout, stderr).
pub fn time_cli<S: AsRef<std::ffi::OsStr>>(
    args: impl IntoIterator<Item = S>,
) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_time-cli"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

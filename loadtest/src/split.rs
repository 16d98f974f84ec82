//! Funding on an existing network (`--targets`): the funded wallets' coins
//! are split, by transactions with many outputs waited to finality, into
//! payment coins owned by a key made for this run. Every payment then spends
//! its own coin, so none waits on another.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use timecoin::protocol::message::Message;
use timecoin::protocol::types::{Address, ChainId, OutPoint, PublicKey, Transaction, TxOutput};
use timecoin::protocol::utxo::UtxoState;
use timecoin::wallet::WalletClient;

use crate::plan::{Coin, COIN_SIZE, DUST, FEE};
use crate::AnyError;

/// Outputs per split transaction (the decoder allows 1000; one is change).
const MAX_SPLIT_OUTPUTS: u64 = 999;

fn address(key: &SigningKey) -> Address {
    Address::from_public_key(&PublicKey::from_signing(key))
}

/// How many outputs of `size` a coin can fund in one transaction.
fn capacity(amount: u64, size: u64) -> u64 {
    (amount.saturating_sub(FEE) / size).min(MAX_SPLIT_OUTPUTS)
}

/// Split transactions turning `sources` into `count` outputs of `size`
/// paying `to` (key index `to_key`), with change back to each source's owner.
fn split_txs(
    chain_id: ChainId,
    keys: &[SigningKey],
    sources: &[Coin],
    size: u64,
    count: u64,
    to_key: usize,
) -> (Vec<Transaction>, Vec<Coin>) {
    let to = address(&keys[to_key]);
    let mut left = count;
    let mut txs = Vec::new();
    let mut made = Vec::new();
    for c in sources {
        if left == 0 {
            break;
        }
        let k = capacity(c.amount, size).min(left);
        if k == 0 {
            continue;
        }
        left -= k;
        let mut outputs: Vec<TxOutput> = (0..k)
            .map(|_| TxOutput {
                amount: size,
                address: to,
            })
            .collect();
        let change = c.amount - FEE - k * size;
        if change >= DUST {
            outputs.push(TxOutput {
                amount: change,
                address: address(&keys[c.key]),
            });
        }
        let tx = Transaction::build_signed(chain_id, &keys[c.key], &[c.outpoint], outputs);
        let txid = tx.txid();
        made.extend((0..k as u32).map(|vout| Coin {
            outpoint: OutPoint { txid, vout },
            amount: size,
            key: to_key,
        }));
        txs.push(tx);
    }
    (txs, made)
}

/// Submits `txs` on one connection and waits until each is final.
async fn finalize_all(
    client: &mut WalletClient,
    txs: &[Transaction],
    stop: &AtomicBool,
) -> Result<(), AnyError> {
    let mut open: std::collections::HashSet<_> = txs.iter().map(|t| t.txid()).collect();
    for tx in txs {
        client.push(&Message::SubmitTransaction(tx.clone()))?;
    }
    client.flush().await?;
    let limit = Duration::from_secs(60);
    let deadline = tokio::time::Instant::now() + limit;
    while !open.is_empty() {
        if stop.load(Ordering::Relaxed) {
            return Err("interrupted".into());
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(format!(
                "{} split transactions not final within {limit:?}",
                open.len()
            )
            .into());
        }
        match client
            .recv_timeout(left.min(Duration::from_millis(500)))
            .await
        {
            Ok(Message::TimeProof { proof, .. }) => {
                open.remove(&proof.txid);
            }
            Ok(Message::TransactionRejected {
                txid,
                reason,
                detail,
                ..
            }) if open.contains(&txid) => {
                return Err(
                    format!("split transaction {txid} rejected: {reason:?}: {detail}").into(),
                )
            }
            Ok(_) | Err(timecoin::wallet::ClientError::Timeout(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Makes `needed` payment coins of [`COIN_SIZE`] owned by `keys[run_key]`
/// from the unspent coins of the other keys (the funded wallets).
pub async fn prepare(
    endpoint: SocketAddr,
    chain_id: ChainId,
    keys: &[SigningKey],
    run_key: usize,
    needed: usize,
    stop: &AtomicBool,
) -> Result<Vec<Coin>, AnyError> {
    let mut client = WalletClient::connect(endpoint, chain_id).await?;
    let mut funds = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        if i == run_key {
            continue;
        }
        for (outpoint, e) in client.utxos(address(k)).await? {
            if e.state == UtxoState::Unspent && e.output.amount >= COIN_SIZE + FEE {
                funds.push(Coin {
                    outpoint,
                    amount: e.output.amount,
                    key: i,
                });
            }
        }
    }
    // Largest first: fewer, fuller split transactions.
    funds.sort_by_key(|c| std::cmp::Reverse(c.amount));
    let needed = needed as u64;
    let total: u64 = funds.iter().map(|c| c.amount).sum();
    let direct: u64 = funds.iter().map(|c| capacity(c.amount, COIN_SIZE)).sum();
    let sources = if direct >= needed {
        funds
    } else {
        // Two levels: bundles first, each of which splits into 999 coins.
        let bundle = MAX_SPLIT_OUTPUTS * COIN_SIZE + FEE;
        let bundles = needed.div_ceil(MAX_SPLIT_OUTPUTS);
        let can: u64 = funds.iter().map(|c| capacity(c.amount, bundle)).sum();
        if can < bundles {
            return Err(format!(
                "the funded wallets hold {} units in {} usable coins: not enough for {needed} payments of {} units (plus split fees)",
                total,
                funds.len(),
                COIN_SIZE
            )
            .into());
        }
        let (txs, made) = split_txs(chain_id, keys, &funds, bundle, bundles, run_key);
        eprintln!(
            "split: {} transactions making {} bundles",
            txs.len(),
            made.len()
        );
        finalize_all(&mut client, &txs, stop).await?;
        made
    };
    let (txs, coins) = split_txs(chain_id, keys, &sources, COIN_SIZE, needed, run_key);
    if (coins.len() as u64) < needed {
        return Err(format!(
            "the funded wallets can fund {} payments, {needed} are needed",
            coins.len()
        )
        .into());
    }
    eprintln!(
        "split: {} transactions making {} payment coins",
        txs.len(),
        coins.len()
    );
    finalize_all(&mut client, &txs, stop).await?;
    Ok(coins)
}

#[cfg(test)]
mod tests {
    use super::*;
    use timecoin::protocol::types::{Txid, COIN};

    #[test]
    fn split_makes_the_coins_and_returns_change() {
        let keys = [
            SigningKey::from_bytes(&[1; 32]),
            SigningKey::from_bytes(&[2; 32]),
        ];
        let src: Vec<Coin> = (0..3)
            .map(|i| Coin {
                outpoint: OutPoint {
                    txid: Txid([i as u8; 32]),
                    vout: 0,
                },
                amount: 1000 * COIN,
                key: 0,
            })
            .collect();
        let (txs, coins) = split_txs(7, &keys, &src, COIN_SIZE, 1500, 1);
        assert_eq!(txs.len(), 2);
        assert_eq!(coins.len(), 1500);
        assert_eq!(txs[0].outputs.len(), 1000);
        let change = txs[0].outputs.last().unwrap();
        assert_eq!(change.address, address(&keys[0]));
        assert_eq!(change.amount, 1000 * COIN - FEE - 999 * COIN_SIZE);
        assert_eq!(txs[1].outputs.len(), 502);
        assert!(coins.iter().all(|c| c.key == 1 && c.amount == COIN_SIZE));
        assert_eq!(coins[999].outpoint.txid, txs[1].txid());
    }
}

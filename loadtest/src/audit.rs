//! After a step, asks every masternode for the state of coins the step spent
//! — every conflicting pair's coin, every plain payment refused or lost, and
//! a sample of finalized ones — and checks that the masternodes agree: one
//! final spender everywhere, never two different ones.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use serde::Serialize;
use timecoin::protocol::message::MAX_QUERY_OUTPOINTS;
use timecoin::protocol::types::{ChainId, OutPoint, Txid};
use timecoin::protocol::utxo::UtxoState;
use timecoin::wallet::WalletClient;

use crate::drive::{Observed, FINALIZED};
use crate::plan::StepPlan;
use crate::AnyError;

/// Finalized plain payments checked per step.
const FINALIZED_SAMPLE: usize = 2_000;
/// Most coins checked per group.
const MAX_AUDITED: usize = 20_000;

/// At most `n`, spread evenly.
fn sample(v: Vec<OutPoint>, n: usize) -> Vec<OutPoint> {
    let step = v.len().div_ceil(n).max(1);
    v.into_iter().step_by(step).collect()
}

/// How the masternodes see a set of coins.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    pub coins: u64,
    /// The same transaction is final on every masternode.
    pub final_everywhere: u64,
    /// ... and confirmed by a block on every masternode.
    pub confirmed_everywhere: u64,
    /// Final on some masternodes while others still hold it locked or
    /// pending, after re-asking for up to 30 s.
    pub not_converged: u64,
    /// Final nowhere, locked on at least one masternode: with locks that
    /// are never released, the coin stays unspendable.
    pub locked_for_good: u64,
    /// Unspent everywhere: refused before any masternode locked it.
    pub free: u64,
    /// Two different transactions final on different masternodes.
    pub conflicting_finality: u64,
    /// For coins not converged: how the masternodes that are behind see
    /// them (unspent, locked, spent-pending, missing).
    pub behind_states: BTreeMap<String, u64>,
}

impl Counts {
    fn add(&mut self, c: &Counts) {
        self.coins += c.coins;
        self.final_everywhere += c.final_everywhere;
        self.confirmed_everywhere += c.confirmed_everywhere;
        self.not_converged += c.not_converged;
        self.locked_for_good += c.locked_for_good;
        self.free += c.free;
        self.conflicting_finality += c.conflicting_finality;
        for (k, v) in &c.behind_states {
            *self.behind_states.entry(k.clone()).or_default() += v;
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Audit {
    /// By group: "pairs", "refused or lost payments", "finalized sample".
    pub groups: BTreeMap<String, Counts>,
    pub errors: Vec<String>,
}

impl Audit {
    pub fn conflicting(&self) -> u64 {
        self.groups.values().map(|c| c.conflicting_finality).sum()
    }
}

/// The coins to audit, by group.
pub fn select(plan: &StepPlan, obs: &Observed) -> BTreeMap<&'static str, Vec<OutPoint>> {
    let mut groups: BTreeMap<&'static str, Vec<OutPoint>> = BTreeMap::new();
    let mut finalized = Vec::new();
    for (i, s) in plan.subs.iter().enumerate() {
        if obs.records.submit_ns[i].load(Ordering::Acquire) == 0 {
            continue;
        }
        let flags = obs.records.flags[i].load(Ordering::Acquire);
        if s.pair.is_some() {
            // Both sides share the coin: list it once.
            if plan.subs.get(i + 1).is_some_and(|n| n.pair == s.pair) {
                groups.entry("pairs").or_default().push(s.coin);
            }
        } else if flags & FINALIZED != 0 {
            finalized.push(s.coin);
        } else {
            groups
                .entry("refused or lost payments")
                .or_default()
                .push(s.coin);
        }
    }
    if !finalized.is_empty() {
        groups.insert("finalized sample", sample(finalized, FINALIZED_SAMPLE));
    }
    for v in groups.values_mut() {
        *v = sample(std::mem::take(v), MAX_AUDITED);
    }
    groups
}

/// What one masternode says about each coin.
async fn states(
    addr: SocketAddr,
    chain_id: ChainId,
    coins: &[OutPoint],
) -> Result<Vec<Option<UtxoState>>, AnyError> {
    let mut c = WalletClient::connect(addr, chain_id).await?;
    let mut out = Vec::with_capacity(coins.len());
    for chunk in coins.chunks(MAX_QUERY_OUTPOINTS) {
        let v = c.utxo_states(chunk.to_vec()).await?;
        if v.len() != chunk.len() {
            return Err(format!(
                "masternode {addr} answered {} of {} coins",
                v.len(),
                chunk.len()
            )
            .into());
        }
        out.extend(v.into_iter().map(|(_, e)| e.map(|e| e.state)));
    }
    Ok(out)
}

fn classify(views: &[Option<UtxoState>]) -> Counts {
    let mut finals: Vec<Txid> = Vec::new();
    let mut locked = false;
    for s in views.iter().flatten() {
        match *s {
            UtxoState::SpentFinalized { txid } | UtxoState::Confirmed { txid, .. } => {
                if !finals.contains(&txid) {
                    finals.push(txid);
                }
            }
            UtxoState::Locked { .. } | UtxoState::SpentPending { .. } => locked = true,
            UtxoState::Unspent => {}
        }
    }
    let all_final = views.iter().all(|s| {
        matches!(
            s,
            Some(UtxoState::SpentFinalized { .. } | UtxoState::Confirmed { .. })
        )
    });
    let mut c = Counts {
        coins: 1,
        ..Counts::default()
    };
    match finals.len() {
        0 if locked => c.locked_for_good = 1,
        0 => c.free = 1,
        1 if all_final => {
            c.final_everywhere = 1;
            let confirmed = views
                .iter()
                .all(|s| matches!(s, Some(UtxoState::Confirmed { .. })));
            c.confirmed_everywhere = confirmed as u64;
        }
        1 => {
            c.not_converged = 1;
            for v in views {
                let name = match v {
                    Some(UtxoState::SpentFinalized { .. } | UtxoState::Confirmed { .. }) => {
                        continue
                    }
                    Some(s) => s.name(),
                    None => "missing",
                };
                *c.behind_states.entry(name.into()).or_default() += 1;
            }
        }
        _ => c.conflicting_finality = 1,
    }
    c
}

/// Every masternode's state of each coin; `None` if a masternode could not
/// be asked.
async fn views(
    endpoints: &[SocketAddr],
    chain_id: ChainId,
    coins: &[OutPoint],
    errors: &mut Vec<String>,
) -> Option<Vec<Vec<Option<UtxoState>>>> {
    let mut views: Vec<Vec<Option<UtxoState>>> = vec![Vec::new(); coins.len()];
    for e in endpoints {
        match states(*e, chain_id, coins).await {
            Ok(v) => {
                for (i, s) in v.into_iter().enumerate() {
                    views[i].push(s);
                }
            }
            Err(err) => {
                errors.push(format!("audit at {e}: {err}"));
                return None;
            }
        }
    }
    Some(views)
}

/// Rounds of re-asking about coins final on some masternodes only (and plain
/// payments still locked): a lagging masternode catches up, a diverged one
/// does not. 15 x 2 s covers the re-announcement backoff (1.5, 3, 6, 12 s).
const CONVERGENCE_ROUNDS: usize = 15;
const CONVERGENCE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

pub async fn run(
    endpoints: &[SocketAddr],
    chain_id: ChainId,
    groups: BTreeMap<&'static str, Vec<OutPoint>>,
) -> Audit {
    let mut audit = Audit::default();
    for (name, coins) in groups {
        let Some(v) = views(endpoints, chain_id, &coins, &mut audit.errors).await else {
            continue;
        };
        let mut counts: Vec<Counts> = v.iter().map(|v| classify(v)).collect();
        // A plain payment locked somewhere is re-announced by the masternodes
        // until it is final: give it the settle time too. (Split double
        // spends stay locked by design, so pairs are not waited for.)
        let wait_locked = name != "pairs";
        for _ in 0..CONVERGENCE_ROUNDS {
            let lagging: Vec<usize> = (0..coins.len())
                .filter(|&i| {
                    counts[i].not_converged > 0 || (wait_locked && counts[i].locked_for_good > 0)
                })
                .collect();
            if lagging.is_empty() {
                break;
            }
            tokio::time::sleep(CONVERGENCE_WAIT).await;
            let ops: Vec<OutPoint> = lagging.iter().map(|&i| coins[i]).collect();
            let Some(v) = views(endpoints, chain_id, &ops, &mut audit.errors).await else {
                break;
            };
            for (k, &i) in lagging.iter().enumerate() {
                counts[i] = classify(&v[k]);
            }
        }
        let mut total = Counts::default();
        for c in &counts {
            total.add(c);
        }
        audit.groups.insert(name.to_string(), total);
    }
    audit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let a = Txid([1; 32]);
        let b = Txid([2; 32]);
        let fin = |t| Some(UtxoState::SpentFinalized { txid: t });
        let lock = |t| Some(UtxoState::Locked { txid: t });
        assert_eq!(classify(&[fin(a), fin(a)]).final_everywhere, 1);
        let c = classify(&[fin(a), lock(b), Some(UtxoState::Unspent)]);
        assert_eq!(c.not_converged, 1);
        assert_eq!(c.behind_states.get("locked"), Some(&1));
        assert_eq!(c.behind_states.get("unspent"), Some(&1));
        assert_eq!(classify(&[lock(a), lock(b)]).locked_for_good, 1);
        assert_eq!(classify(&[Some(UtxoState::Unspent), None]).free, 1);
        assert_eq!(classify(&[fin(a), fin(b)]).conflicting_finality, 1);
    }
}

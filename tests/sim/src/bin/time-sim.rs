//! `time-sim`: run the deterministic simulator.
//!
//! ```text
//! time-sim --seed 42                       # one seed, with a summary
//! time-sim --seed 42 --trace               # ... and every event it handled
//! time-sim --seeds 0..1000                 # a batch on all cores
//! time-sim --seeds 0..100000 --scenario partition
//! time-sim --seeds 0..1000 --planted quorum --expect-violation
//! time-sim --seeds 0..200 --byzantine-weight 1/3 --expect-violation
//! time-sim --decoders 200000               # decoder mutation smoke
//! ```

use std::ops::Range;
use std::process::ExitCode;

use clap::Parser;
use time_sim::batch::{default_jobs, run_batch};
use time_sim::world::run_seed_traced;
use time_sim::{BlockMode, ByzWeight, Options, Planted, RunReport, Scenario};

#[derive(Parser, Debug)]
#[command(
    name = "time-sim",
    about = "Deterministic simulator for TIME Coin masternodes"
)]
struct Args {
    /// Run one seed and print its report.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run a range of seeds, `A..B` (B exclusive) or a count `N` (= 0..N).
    #[arg(long)]
    seeds: Option<String>,
    /// Scenario family (see --list-scenarios).
    #[arg(long, default_value = "mixed")]
    scenario: Scenario,
    /// Plant a bug in the core: none, quorum, release-lock, no-catchup,
    /// block-quorum, block-forget-votes.
    #[arg(long, default_value = "none")]
    planted: Planted,
    /// Byzantine weight: random (up to just under 1/3), max-safe, 0, or a
    /// fraction such as 1/3 or 0.34 (the smallest set at or above it).
    #[arg(long = "byzantine-weight", default_value = "random")]
    byzantine: ByzWeight,
    /// Block layer: random (drawn per seed), on, off. Always on in the
    /// `blocks` scenario and with a planted block bug.
    #[arg(long, default_value = "random")]
    blocks: BlockMode,
    /// Worker threads for --seeds.
    #[arg(long)]
    jobs: Option<usize>,
    /// Print every event of a single seed.
    #[arg(long)]
    trace: bool,
    /// Stop a batch at the lowest failing seed.
    #[arg(long)]
    stop_at_first: bool,
    /// Also fail on violations traced to known engine issues.
    #[arg(long)]
    strict: bool,
    /// Control run: succeed only if some seed reports a violation.
    #[arg(long)]
    expect_violation: bool,
    /// Print one line per seed.
    #[arg(long)]
    verbose: bool,
    /// Feed this many mutated inputs to every decoder and exit.
    #[arg(long)]
    decoders: Option<u64>,
    /// Write the decoders' seed corpora for the cargo-fuzz targets to DIR/<target>/.
    #[arg(long, value_name = "DIR")]
    write_corpus: Option<std::path::PathBuf>,
    #[arg(long)]
    list_scenarios: bool,
}

fn parse_range(s: &str) -> Result<Range<u64>, String> {
    if let Some((a, b)) = s.split_once("..") {
        let a: u64 = a.parse().map_err(|_| format!("bad range {s:?}"))?;
        let b: u64 = b.parse().map_err(|_| format!("bad range {s:?}"))?;
        if a >= b {
            return Err(format!("empty range {s:?}"));
        }
        Ok(a..b)
    } else {
        let n: u64 = s.parse().map_err(|_| format!("bad seed count {s:?}"))?;
        Ok(0..n)
    }
}

fn print_report(r: &RunReport) {
    println!("{}", r.summary);
    println!(
        "  {} events, trace {}; {} honest payments ({} final everywhere), {} double-spend txs, {} finality events, {} restarts",
        r.events, r.trace_hash, r.payments, r.payments_final_everywhere, r.double_spend_txs, r.finality_events, r.restarts
    );
    println!(
        "  detected by honest nodes: {} conflicting-proof events, {} equivocation events; {}",
        r.conflicting_proofs_detected, r.equivocations_detected, r.honest_metrics
    );
    println!(
        "  honest state machines: {} re-announcements, {} proofs served, {} finality-log pages served, {} catch-up proof requests; {} restart catch-up windows checked ({} transactions required)",
        r.reannounced, r.proofs_served, r.log_pages_served, r.catchup_proofs_requested, r.catch_up_windows, r.catch_up_required
    );
    let n = &r.net;
    println!(
        "  network: reliable {} messages, {} transport retransmits, {} queued while down, {} refused (queue full), {} lost in flight, {} voided by crashes, {} link downs; fast path {} datagrams, {} lost, {} dropped (no link), {} duplicated; {} undecodable frames",
        n.frames,
        n.retransmits,
        n.queued,
        n.refused_full,
        n.lost_in_flight,
        n.voided_by_crash,
        n.link_downs,
        n.datagrams,
        n.datagrams_lost,
        n.datagrams_dropped,
        n.duplicated,
        r.decode_errors
    );
    let b = &r.byz;
    println!(
        "  Byzantine: {} batches signed, {} forged, {} unregistered, {} replayed, {} flood items ({} full-rate batches), {} garbage frames, {} transport junk, {} torsion-signed batches, {} bad proofs, {} proofs pushed, {} relays, {} malleated copies",
        b.batches_signed, b.forged, b.unregistered, b.replayed, b.flood_items, b.flood_batches, b.garbage_frames, b.junk_transport, b.torsion, b.bad_proofs, b.proofs_pushed, b.relays, b.malleated
    );
    if let Some(f) = &r.blocks {
        let x = &b.blocks;
        println!(
            "  blocks: height {}, {} heights with a view change, {} payments confirmed; calm: {} finality-to-confirmation times checked (longest {} ms), longest gap between commits {} ms; Byzantine: {} proposals ({} equivocating, {} partial, {} with bad bodies, {} withheld), {} votes ({} double)",
            f.height, f.view_changes, f.confirmed, f.confirm_checked, f.max_confirm / 1_000, f.max_calm_gap / 1_000,
            x.proposals, x.equivocations, x.partial_proposals, x.bad_bodies, x.withheld, x.votes, x.double_votes
        );
    }
    if r.violations.is_empty() {
        println!("  OK: no invariant violated");
    } else {
        let known = r.known().count();
        println!(
            "  {} VIOLATIONS ({} traced to known engine issues{}):",
            r.violations.len(),
            known,
            if r.ok() {
                ", tolerated without --strict"
            } else {
                ""
            }
        );
        // Every failing violation; known ones up to a limit.
        let mut known_shown = 0;
        for v in &r.violations {
            if v.known.is_some() && !r.options.strict {
                known_shown += 1;
                if known_shown > 20 {
                    continue;
                }
            }
            println!("    {v}");
        }
        if known_shown > 20 {
            println!(
                "    ... and {} more traced to known engine issues",
                known_shown - 20
            );
        }
        println!("  replay: {}", r.replay_command());
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.list_scenarios {
        for s in Scenario::ALL {
            println!("{:<13} {}", s.name(), s.describe());
        }
        return ExitCode::SUCCESS;
    }
    if let Some(dir) = &args.write_corpus {
        let c = time_sim::decoders::structured_corpus();
        for (target, inputs) in c.by_target() {
            let d = dir.join(target);
            if let Err(e) = std::fs::create_dir_all(&d) {
                eprintln!("{}: {e}", d.display());
                return ExitCode::FAILURE;
            }
            for (i, bytes) in inputs.iter().enumerate() {
                if let Err(e) = std::fs::write(d.join(format!("seed-{i:02}")), bytes) {
                    eprintln!("{}: {e}", d.display());
                    return ExitCode::FAILURE;
                }
            }
            println!("{}: {} seed inputs", d.display(), inputs.len());
        }
        return ExitCode::SUCCESS;
    }
    if let Some(n) = args.decoders {
        let mut bad = false;
        for st in time_sim::decoders::smoke(0, n) {
            println!(
                "{:<24} {} inputs, {} decoded, {} rejected, {} failures",
                st.name,
                st.inputs,
                st.decoded,
                st.rejected,
                st.failures.len()
            );
            for f in &st.failures {
                println!("    {f}");
                bad = true;
            }
        }
        return if bad {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }
    let options = Options {
        scenario: args.scenario,
        planted: args.planted,
        byzantine: args.byzantine,
        strict: args.strict,
        blocks: args.blocks,
    };
    let found = if let Some(seed) = args.seed {
        let out: Option<Box<dyn std::io::Write + Send>> = if args.trace {
            Some(Box::new(std::io::stdout()))
        } else {
            None
        };
        let r = run_seed_traced(seed, options, out);
        print_report(&r);
        !r.ok()
    } else {
        let range = match parse_range(args.seeds.as_deref().unwrap_or("0..1000")) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        };
        let jobs = args.jobs.unwrap_or_else(default_jobs);
        let verbose = args.verbose;
        let progress = move |r: &RunReport| {
            if verbose {
                let blocks = r.blocks.as_ref().map_or(String::new(), |b| {
                    format!(
                        " blocks: height {} longest calm gap {} ms, longest calm confirmation {} ms",
                        b.height,
                        b.max_calm_gap / 1_000,
                        b.max_confirm / 1_000
                    )
                });
                println!(
                    "seed {:>6} {} {:>3} payments {:>6} events trace {}{blocks}",
                    r.seed,
                    if r.ok() { "ok  " } else { "FAIL" },
                    r.payments,
                    r.events,
                    r.trace_hash
                );
            }
            if let Some(v) = r.failing().next() {
                println!(
                    "FAIL seed {}: {v}\n  replay: {}",
                    r.seed,
                    r.replay_command()
                );
            } else if let Some(v) = r.known().next() {
                println!("known issue, seed {}: {v}", r.seed);
            }
        };
        let report = run_batch(
            range.clone(),
            options,
            jobs,
            args.stop_at_first,
            Some(&progress),
        );
        let failures = report.failures();
        let payments: usize = report.runs.iter().map(|r| r.payments).sum();
        let events: u64 = report.runs.iter().map(|r| r.events).sum();
        let cp: usize = report
            .runs
            .iter()
            .map(|r| r.conflicting_proofs_detected)
            .sum();
        let mut known: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
        for r in &report.runs {
            for k in r.known().filter_map(|v| v.known.map(|k| k.name())) {
                let seeds = known.entry(k).or_default();
                if seeds.last() != Some(&r.seed) {
                    seeds.push(r.seed);
                }
            }
        }
        let windows: u64 = report.runs.iter().map(|r| r.catch_up_windows).sum();
        println!(
            "{} seeds ({:?}, scenario {}, planted {}, Byzantine weight {}) in {:.1} s on {} threads: {} failed; {} honest payments, {} events, {} conflicting-proof detections, {} restart catch-up windows checked",
            report.runs.len(),
            range,
            options.scenario,
            options.planted.name(),
            options.byzantine.arg(),
            report.elapsed.as_secs_f64(),
            jobs,
            failures.len(),
            payments,
            events,
            cp,
            windows
        );
        let mut kinds: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
        for r in &report.runs {
            let mut ks: Vec<&str> = r.violations.iter().map(|v| v.kind.name()).collect();
            ks.sort();
            ks.dedup();
            for k in ks {
                kinds.entry(k).or_default().push(r.seed);
            }
        }
        for (k, seeds) in &kinds {
            println!(
                "violation {k}: {} seeds (first {:?})",
                seeds.len(),
                &seeds[..seeds.len().min(8)]
            );
        }
        for (k, seeds) in &known {
            println!(
                "known engine issue {k}: {} seeds{} (first {:?})",
                seeds.len(),
                if options.strict {
                    ""
                } else {
                    ", tolerated without --strict"
                },
                &seeds[..seeds.len().min(8)]
            );
        }
        if let Some(first) = report.first_failure() {
            println!("first failing seed: {}", first.seed);
            if let Some(v) = first.failing().next() {
                println!("  {v}");
            }
            println!("  replay: {}", first.replay_command());
        }
        !failures.is_empty()
    };
    match (found, args.expect_violation) {
        (false, false) | (true, true) => ExitCode::SUCCESS,
        (true, false) => ExitCode::FAILURE,
        (false, true) => {
            println!("control run: expected a violation, found none");
            ExitCode::FAILURE
        }
    }
}

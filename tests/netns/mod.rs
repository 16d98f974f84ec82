//! Network namespaces for multi-host tests: `n` host namespaces, each with one
//! veth whose peer sits in a fifth "switch" namespace, attached to a Linux
//! bridge there. Nothing is added to the root namespace: the bridge, both ends
//! of every veth pair, the addresses (a private 10.231.X.0/24), the routes and
//! the nftables tables all live in namespaces this process created, and are
//! gone when [`Topology`] is dropped (also on panic).
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables); see [`preflight`].

#![allow(dead_code)]

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Every namespace this helper creates is named `PREFIX-<pid>-<n>-...`.
pub const PREFIX: &str = "tcmh";
/// The nftables table holding the loss rules, in each host namespace.
pub const LOSS_TABLE: &str = "tcmh_loss";
/// The nftables table guarding the multicast TTL, in each host namespace.
pub const TTL_TABLE: &str = "tcmh_ttl";
/// The fast path's datagram header and signature: a heartbeat (no items)
/// is this long; a datagram carrying a lock broadcast or votes is longer.
pub const EMPTY_DATAGRAM_LEN: u32 = 18 + 64;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Why multi-host tests cannot run here, if they cannot.
pub fn preflight() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not running as root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    for (tool, arg, pkg) in [("ip", "-V", "iproute2"), ("nft", "--version", "nftables")] {
        match Command::new(tool).arg(arg).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                return Err(format!(
                    "`{tool} {arg}` failed ({}): {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                ))
            }
            Err(e) => return Err(format!("`{tool}` is missing ({e}); install {pkg}")),
        }
    }
    Ok(())
}

/// Runs a command, returning its stdout or a message with its stderr.
fn run(cmd: &mut Command) -> Result<String, String> {
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<String, String> {
    run(Command::new("ip").args(args))
}

/// Pids of processes whose network namespace is `ns`.
fn pids_in(ns: &str) -> Vec<i32> {
    ip(&["netns", "pids", ns])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn netns_exists(ns: &str) -> bool {
    ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().next() == Some(ns))
}

/// A namespace of ours left over from an earlier process with this pid (a
/// run that was killed before it could clean up): names carry the pid and a
/// per-process counter, so nobody else's namespace can have this name.
/// Removed only when no process lives in it.
fn remove_stale(ns: &str) -> Result<(), String> {
    if !netns_exists(ns) {
        return Ok(());
    }
    let pids = pids_in(ns);
    if !pids.is_empty() {
        return Err(format!(
            "namespace {ns} already exists and processes {pids:?} run in it; not touching it"
        ));
    }
    eprintln!(
        "netns: removing stale namespace {ns} (a leftover of an earlier run with pid {})",
        std::process::id()
    );
    ip(&["netns", "del", ns]).map(|_| ())
}

pub struct Topology {
    /// `PREFIX-<pid>-<n>`.
    pub name: String,
    /// The X of 10.231.X.0/24.
    pub subnet: u8,
    pub hosts: Vec<String>,
    pub switch: String,
    /// Namespaces created so far, for teardown (a partial setup too).
    created: Vec<String>,
}

impl Topology {
    /// `n` host namespaces on one bridge. Host `i` has address
    /// `10.231.X.(10 + i)/24` on `eth0`, and `lo` up.
    pub fn create(n: usize) -> Result<Topology, String> {
        assert!(n > 0 && n < 200);
        let name = format!(
            "{PREFIX}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let mut t = Topology {
            subnet: rand::random::<u8>(),
            hosts: (0..n).map(|i| format!("{name}-h{i}")).collect(),
            switch: format!("{name}-sw"),
            name,
            created: Vec::new(),
        };
        // On error `t` is dropped here and removes what was created.
        t.setup()?;
        Ok(t)
    }

    fn add_ns(&mut self, ns: &str) -> Result<(), String> {
        remove_stale(ns)?;
        ip(&["netns", "add", ns])?;
        self.created.push(ns.to_string());
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    fn setup(&mut self) -> Result<(), String> {
        let sw = self.switch.clone();
        self.add_ns(&sw)?;
        // Snooping off: the bridge floods multicast to every port, with no
        // dependence on IGMP reports or a querier.
        ip(&[
            "-n",
            &sw,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for i in 0..self.hosts.len() {
            let h = self.hosts[i].clone();
            self.add_ns(&h)?;
            let port = format!("p{i}");
            // Created inside the switch namespace, the peer straight inside
            // the host namespace: neither end ever exists in the root one.
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &h,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            let addr = format!("{}/24", self.host_ip(i));
            ip(&["-n", &h, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &h, "link", "set", "eth0", "up"])?;
            // The node sets IP_MULTICAST_IF itself; the route keeps any other
            // multicast of this namespace on the test link as well.
            ip(&["-n", &h, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
        }
        Ok(())
    }

    pub fn host_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.subnet, 10 + i as u8)
    }

    /// A command run inside host namespace `i` (`ip netns exec` execs the
    /// program, so the child's pid is the program's).
    pub fn command(&self, i: usize, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hosts[i], program]);
        c
    }

    /// Runs `f` on a thread of its own that has entered host namespace `i`
    /// (setns(2) changes only the calling thread's network namespace): the
    /// sockets it opens live in that namespace.
    pub fn run_in<R: Send>(&self, i: usize, f: impl FnOnce() -> R + Send) -> R {
        use std::os::fd::AsRawFd;
        let path = format!("/run/netns/{}", self.hosts[i]);
        let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: a valid namespace fd; affects only this thread.
                let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Drops `percent`% of the multicast datagrams to `group` that host `i`
    /// receives from the others (nftables `numgen random`, input hook of
    /// that host's namespace only); replaces any earlier setting, atomically.
    /// Named counters (reset by each call): `mcast_in` (all of them),
    /// `dropped`, `data_dropped` (the dropped ones longer than a heartbeat,
    /// i.e. carrying lock broadcasts or votes), and `from<j>` (those from
    /// host `j` that got through).
    pub fn set_multicast_loss(
        &self,
        i: usize,
        group: SocketAddrV4,
        percent: u32,
    ) -> Result<(), String> {
        assert!(percent <= 100);
        let (g, p, me) = (group.ip(), group.port(), self.host_ip(i));
        let hb = EMPTY_DATAGRAM_LEN + 8; // plus the UDP header
        let m = format!("ip daddr {g} udp dport {p} ip saddr != {me}");
        let others: Vec<usize> = (0..self.hosts.len()).filter(|j| *j != i).collect();
        let mut counters = String::new();
        let mut passed = String::new();
        for j in &others {
            counters += &format!("\tcounter from{j} {{ }}\n");
            passed += &format!(
                "\t\t{m} ip saddr {} counter name \"from{j}\"\n",
                self.host_ip(*j)
            );
        }
        // Declaring the table first makes the delete succeed when there is
        // none yet; `nft -f` applies the whole script as one transaction.
        let rules = format!(
            "table ip {LOSS_TABLE}\n\
             delete table ip {LOSS_TABLE}\n\
             table ip {LOSS_TABLE} {{\n\
             \tcounter mcast_in {{ }}\n\
             \tcounter dropped {{ }}\n\
             \tcounter data_dropped {{ }}\n\
             {counters}\
             \tchain input {{\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t\t{m} counter name \"mcast_in\"\n\
             \t\t{m} meta mark set numgen random mod 100\n\
             \t\t{m} meta mark < {percent} udp length > {hb} counter name \"data_dropped\"\n\
             \t\t{m} meta mark < {percent} counter name \"dropped\" drop\n\
             {passed}\
             \t}}\n\
             }}\n"
        );
        self.nft_script(i, &rules)
    }

    /// Counts, in host `i`'s output hook, the multicast datagrams it sends
    /// (counter `mcast_out` of [`TTL_TABLE`]) and drops any with a TTL
    /// other than 1 (counter `ttl_not_1`): multicast never leaves the link.
    pub fn guard_multicast_ttl(&self, i: usize) -> Result<(), String> {
        let m = "ip daddr 224.0.0.0/4";
        let rules = format!(
            "table ip {TTL_TABLE}\n\
             delete table ip {TTL_TABLE}\n\
             table ip {TTL_TABLE} {{\n\
             \tcounter mcast_out {{ }}\n\
             \tcounter ttl_not_1 {{ }}\n\
             \tchain output {{\n\
             \t\ttype filter hook output priority filter; policy accept;\n\
             \t\t{m} counter name \"mcast_out\"\n\
             \t\t{m} ip ttl != 1 counter name \"ttl_not_1\" drop\n\
             \t}}\n\
             }}\n"
        );
        self.nft_script(i, &rules)
    }

    fn nft_script(&self, i: usize, rules: &str) -> Result<(), String> {
        let mut child = self
            .command(i, "nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("nft: {e}"))?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(rules.as_bytes())
            .map_err(|e| format!("nft stdin: {e}"))?;
        let o = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "nft -f in {} failed: {}\nrules:\n{rules}",
                self.hosts[i],
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Ok(())
    }

    /// Packets counted by the named counter of [`LOSS_TABLE`] in host `i`.
    pub fn counter(&self, i: usize, name: &str) -> Result<u64, String> {
        self.table_counter(i, LOSS_TABLE, name)
    }

    /// Packets counted by the named counter of nftables table `table` in host `i`.
    pub fn table_counter(&self, i: usize, table: &str, name: &str) -> Result<u64, String> {
        let out = run(self
            .command(i, "nft")
            .args(["list", "counter", "ip", table, name]))?;
        let words: Vec<&str> = out.split_whitespace().collect();
        words
            .windows(2)
            .find(|w| w[0] == "packets")
            .and_then(|w| w[1].parse().ok())
            .ok_or_else(|| format!("no packet count in `nft list counter`: {out}"))
    }

    /// Whether anything of this topology is still there.
    pub fn leftovers(&self) -> Vec<String> {
        let all = ip(&["netns", "list"]).unwrap_or_default();
        all.lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&format!("{}-", self.name)))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Hosts first, the switch (with the bridge) last. Deleting a
        // namespace destroys its veth ends, which destroys their peers.
        for ns in self.created.iter().rev() {
            // Processes still in there were started by this test (the
            // namespaces are ours): end them by pid, or the namespace would
            // outlive its name.
            for pid in pids_in(ns) {
                // SAFETY: kill(2) on a pid of a process in our namespace.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("netns: cannot delete {ns}: {e}");
            }
        }
        let left = self.leftovers();
        if !left.is_empty() {
            eprintln!("netns: namespaces left behind: {left:?}");
        }
    }
}

//! What the node changes on the machine outside its run folder, recorded so that teardown
//! undoes exactly that and nothing else.
//!
//! Test traffic must never leave the machine. Pods may reach loopback, the machine's own
//! address and each other; so, before any Pod starts:
//! - the service CIDR is routed to a blackhole: kube-proxy DNATs Service IPs before routing,
//!   so Services still work, but a Service IP without rules goes nowhere instead of out of
//!   the default route;
//! - forwarded traffic from the Pod CIDR to anything but the Pod CIDR is dropped (the bridge
//!   plugin turns on IP forwarding for its gateway; this makes forwarding useless for Pods);
//! - the Pod CIDR is never masqueraded (the CNI config has `ipMasq: false`, and a RETURN at
//!   the top of nat POSTROUTING keeps any later rule from doing it);
//! - and the other way round: the API server, which listens on the machine's address for the
//!   Pods' sake, accepts connections from this machine and its Pods only.
//!
//! Fixed host paths that the kubelet, containerd and the CNI plugins create (one node per
//! machine) are removed at teardown only when they did not exist before; iptables chains that
//! appeared while the node ran (the kubelet's canaries) are removed by name, from the
//! difference of two listings.
//!
//! The record is also written to the node's folder (`guard.json`) as it changes, so that when
//! the process that started the node dies without a teardown (SIGKILL), the next harness start
//! (the sweep of dead runs, `super::sweep_dead`) undoes exactly the same things.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::super::controlplane::Error;

/// Host paths the node's components create at fixed places.
const FIXED_PATHS: &[&str] = &[
    "/var/lib/kubelet",
    "/var/lib/cni",
    "/run/containerd",
    "/run/netns",
];
const TABLES: &[&str] = &["filter", "nat", "mangle"];
const IPTABLES: &[&str] = &["iptables", "ip6tables"];

/// The rules and leftovers one node run owns.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Guard {
    /// Where this record is kept (`<node dir>/guard.json`).
    record: PathBuf,
    service_cidr: String,
    pod_cidr: String,
    /// The API server's address and port (reachable from this machine and its Pods only).
    api_server: (String, String),
    comment: String,
    bridge: String,
    /// Rules added (table, rule spec without -A/-I), in order.
    rules: Vec<(String, Vec<String>)>,
    route: bool,
    ip_forward_before: Option<String>,
    absent_paths: Vec<PathBuf>,
    bridge_existed: bool,
    chains_before: BTreeSet<(String, String, String)>,
    netns_before: BTreeSet<String>,
    cgroups_absent: Vec<PathBuf>,
}

fn run(cmd: &str, args: &[&str]) -> Result<String, Error> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| Error::io(format!("run {cmd}"), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Node(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Chain names per (binary, table).
fn chains() -> BTreeSet<(String, String, String)> {
    let mut set = BTreeSet::new();
    for bin in IPTABLES {
        for table in TABLES {
            if let Ok(out) = run(bin, &["-w", "-t", table, "-S"]) {
                for line in out.lines() {
                    if let Some(name) = line.strip_prefix("-N ") {
                        set.insert((bin.to_string(), table.to_string(), name.trim().to_string()));
                    }
                }
            }
        }
    }
    set
}

fn netns_entries() -> BTreeSet<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The `k8s.io` cgroup of every v1 controller (containerd's default parent for Pods).
fn k8s_cgroups() -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .map(|d| {
            d.flatten()
                .map(|e| e.path().join("k8s.io"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
}

impl Guard {
    /// Records the machine's state, then installs the isolation rules. Fails (changing
    /// nothing it has not undone) when the service CIDR already has a route or the bridge
    /// already exists: another node, or a network this must not shadow.
    pub fn install(
        service_cidr: &str,
        pod_cidr: &str,
        bridge: &str,
        run_id: &str,
        record: &Path,
        api_server: std::net::SocketAddrV4,
    ) -> Result<Guard, Error> {
        let routes = run("ip", &["-4", "route", "show", "table", "all"])?;
        if routes.lines().any(|l| {
            l.split_whitespace()
                .any(|w| w == service_cidr || w == pod_cidr)
        }) {
            return Err(Error::Node(format!(
                "a route for {service_cidr} or {pod_cidr} already exists (another node on this machine?)"
            )));
        }
        let mut g = Guard {
            record: record.to_path_buf(),
            service_cidr: service_cidr.to_string(),
            pod_cidr: pod_cidr.to_string(),
            api_server: (
                format!("{}/32", api_server.ip()),
                api_server.port().to_string(),
            ),
            comment: format!("linktoken-node {run_id}"),
            bridge: bridge.to_string(),
            rules: Vec::new(),
            route: false,
            ip_forward_before: std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                .ok()
                .map(|s| s.trim().to_string()),
            absent_paths: FIXED_PATHS
                .iter()
                .map(PathBuf::from)
                .filter(|p| !p.exists())
                .collect(),
            bridge_existed: Path::new("/sys/class/net").join(bridge).exists(),
            chains_before: chains(),
            netns_before: netns_entries(),
            cgroups_absent: k8s_cgroups().into_iter().filter(|p| !p.exists()).collect(),
        };
        if g.bridge_existed {
            return Err(Error::Node(format!(
                "the bridge {bridge} already exists (another node on this machine?)"
            )));
        }
        if let Err(e) = g.add_all() {
            g.remove();
            return Err(e);
        }
        Ok(g)
    }

    fn add_all(&mut self) -> Result<(), Error> {
        self.save()?;
        run("ip", &["route", "add", "blackhole", &self.service_cidr])?;
        self.route = true;
        self.save()?;
        // From the Pod CIDR to anything else: dropped when forwarded, never masqueraded.
        for (table, chain, target) in [
            ("filter", "FORWARD", "DROP"),
            ("nat", "POSTROUTING", "RETURN"),
        ] {
            let spec = [
                "-s",
                &self.pod_cidr,
                "!",
                "-d",
                &self.pod_cidr,
                "-m",
                "comment",
                "--comment",
                &self.comment,
                "-j",
                target,
            ]
            .map(str::to_string)
            .to_vec();
            self.add_rule(table, chain, spec)?;
        }
        // The API server listens on the machine's address so that Pods reach it, and its admin
        // token is a constant: only this machine and its Pods may connect, never the network.
        let (ip, port) = self.api_server.clone();
        let spec = [
            "-d",
            &ip,
            "-p",
            "tcp",
            "--dport",
            &port,
            "!",
            "-s",
            &self.pod_cidr,
            "-m",
            "addrtype",
            "!",
            "--src-type",
            "LOCAL",
            "-m",
            "comment",
            "--comment",
            &self.comment,
            "-j",
            "DROP",
        ]
        .map(str::to_string)
        .to_vec();
        self.add_rule("filter", "INPUT", spec)?;
        Ok(())
    }

    fn add_rule(&mut self, table: &str, chain: &str, spec: Vec<String>) -> Result<(), Error> {
        let mut args: Vec<&str> = vec!["-w", "-t", table, "-I", chain, "1"];
        args.extend(spec.iter().map(String::as_str));
        run("iptables", &args)?;
        let mut full = vec![chain.to_string()];
        full.extend(spec);
        self.rules.push((table.to_string(), full));
        self.save()
    }

    fn save(&self) -> Result<(), Error> {
        let json = serde_json::to_vec(self)
            .map_err(|e| Error::Node(format!("record the node's changes: {e}")))?;
        std::fs::write(&self.record, json)
            .map_err(|e| Error::io(format!("write {}", self.record.display()), e))
    }

    /// The record a node left in its folder, if any (its process died before its teardown).
    pub fn load(record: &Path) -> Option<Guard> {
        let bytes = std::fs::read(record).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The Pod sandboxes' network namespaces (the CNI plugins name them `cni-<uuid>`) that
    /// appeared since `install`: left over when the kubelet could not stop its Pods.
    pub fn new_netns(&self) -> Vec<String> {
        netns_entries()
            .difference(&self.netns_before)
            .filter(|n| n.starts_with("cni-"))
            .cloned()
            .collect()
    }

    /// Undoes everything `install` did and removes what appeared at fixed places since.
    /// Idempotent; best effort (each step is independent, failures are printed).
    pub fn remove(&mut self) {
        let warn = |what: &str, r: Result<String, Error>| {
            if let Err(e) = r {
                eprintln!("node teardown: {what}: {e}");
            }
        };
        for ns in self.new_netns() {
            let p = format!("/run/netns/{ns}");
            detach(&p);
            let _ = std::fs::remove_file(&p);
        }
        if !self.bridge_existed && Path::new("/sys/class/net").join(&self.bridge).exists() {
            warn("delete bridge", run("ip", &["link", "del", &self.bridge]));
        }
        for (table, spec) in std::mem::take(&mut self.rules).into_iter().rev() {
            let mut args: Vec<&str> = vec!["-w", "-t", &table, "-D"];
            args.extend(spec.iter().map(String::as_str));
            warn("delete rule", run("iptables", &args));
        }
        if std::mem::take(&mut self.route) {
            warn(
                "delete blackhole route",
                run("ip", &["route", "del", "blackhole", &self.service_cidr]),
            );
        }
        self.remove_new_chains();
        if let Some(v) = self.ip_forward_before.take() {
            let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", v);
        }
        for cg in std::mem::take(&mut self.cgroups_absent) {
            remove_cgroup_tree(&cg);
        }
        for p in std::mem::take(&mut self.absent_paths) {
            if p == Path::new("/run/netns") {
                // Shared with `ip netns`: removed only when nothing else is in it.
                let _ = std::fs::remove_dir(&p);
            } else {
                unmount_under(&p);
                let _ = std::fs::remove_dir_all(&p);
            }
        }
        // Undone: a later sweep must not act on this record again.
        let _ = std::fs::remove_file(&self.record);
    }

    /// Chains that did not exist before the node started: references to them first, then
    /// their rules, then the chains.
    fn remove_new_chains(&mut self) {
        let new: Vec<_> = chains().difference(&self.chains_before).cloned().collect();
        for (bin, table, chain) in &new {
            let Ok(listing) = run(bin, &["-w", "-t", table, "-S"]) else {
                continue;
            };
            for rule in jumps_to(&listing, chain) {
                let mut args = vec!["-w", "-t", table.as_str(), "-D"];
                args.extend(rule.iter().map(String::as_str));
                let _ = Command::new(bin).args(&args).output();
            }
        }
        for (bin, table, chain) in &new {
            let _ = run(bin, &["-w", "-t", table, "-F", chain]);
        }
        for (bin, table, chain) in &new {
            if let Err(e) = run(bin, &["-w", "-t", table, "-X", chain]) {
                eprintln!("node teardown: delete chain {table}/{chain}: {e}");
            }
        }
        self.chains_before.clear();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Removes a cgroup and its children (cgroupfs removes only empty groups: leaves first).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Detaches every mount at or below `dir`, deepest first, so that removing the folder never
/// reaches into a mounted filesystem.
pub fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.display().to_string();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        detach(&p);
    }
}

/// umount2(MNT_DETACH), ignoring errors (not mounted, already gone).
fn detach(path: &str) {
    if let Ok(c) = std::ffi::CString::new(path) {
        // SAFETY: a valid NUL-terminated path; umount2 does not keep the pointer.
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
}

/// The rules of an `iptables -S` listing that jump (or go) to `chain`, as `-D` takes them
/// (chain first, without `-A`).
fn jumps_to(listing: &str, chain: &str) -> Vec<Vec<String>> {
    listing
        .lines()
        .map(rule_words)
        .filter(|w| w.first().is_some_and(|a| a == "-A"))
        .filter(|w| {
            w.windows(2)
                .any(|p| (p[0] == "-j" || p[0] == "-g") && p[1] == chain)
        })
        .map(|w| w[1..].to_vec())
        .collect()
}

/// The words of a rule as `iptables -S` prints it: split at spaces, except inside double quotes
/// (comments), where `\"` is a quote.
fn rule_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted => word.extend(chars.next()),
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::{jumps_to, rule_words};

    #[test]
    fn only_the_jumps_to_the_chain_are_removed() {
        let listing = r#"-P INPUT ACCEPT
-N KUBE-FIREWALL
-N KUBE-FIREWALL-X
-A INPUT -j KUBE-FIREWALL
-A INPUT -j KUBE-FIREWALL-X
-A OUTPUT -m comment --comment "to KUBE-FIREWALL" -j ACCEPT
-A FORWARD -m comment --comment "kubernetes forwarding rules" -g KUBE-FIREWALL
-A KUBE-FIREWALL -j DROP
"#;
        assert_eq!(
            jumps_to(listing, "KUBE-FIREWALL"),
            vec![
                vec!["INPUT", "-j", "KUBE-FIREWALL"],
                vec![
                    "FORWARD",
                    "-m",
                    "comment",
                    "--comment",
                    "kubernetes forwarding rules",
                    "-g",
                    "KUBE-FIREWALL"
                ],
            ]
        );
    }

    #[test]
    fn rule_words_keep_quoted_comments_whole() {
        assert_eq!(
            rule_words(
                r#"-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#
            ),
            [
                "-A",
                "FORWARD",
                "-m",
                "conntrack",
                "--ctstate",
                "NEW",
                "-m",
                "comment",
                "--comment",
                "kubernetes service portals",
                "-j",
                "KUBE-SERVICES"
            ]
        );
        assert_eq!(
            rule_words(r#"-A X --comment "a \"q\" b"  -j Y"#),
            ["-A", "X", "--comment", r#"a "q" b"#, "-j", "Y"]
        );
    }
}

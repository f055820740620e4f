//! Removes what an earlier run left behind when its owner died without cleaning up
//! (SIGKILL of a test process, a crash, a power cut).
//!
//! Every run folder under the state root holds `owner.pid` (the process that owns the control
//! plane) and `pids` (each child). A folder whose owner is dead is swept: each recorded child
//! that still runs one of our binaries out of that folder is killed with its process group,
//! then the folder is removed.

use std::path::Path;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::process::{cmdline, pid_alive, recorded_pids};

/// Sweeps dead runs under `root`; returns how many processes it killed.
pub fn sweep_dead_runs(root: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|d| d.is_dir())
        .map(|d| sweep_if_dead(&d, true).unwrap_or(0))
        .sum()
}

/// Sweeps one run folder if its owner is dead: kills its recorded children and, with
/// `remove`, deletes the folder. Returns None when the owner is alive (nothing done).
pub fn sweep_if_dead(dir: &Path, remove: bool) -> Option<usize> {
    if owner_alive(dir) {
        return None;
    }
    let dir_str = dir.display().to_string();
    let mut killed = 0;
    for pid in recorded_pids(&dir.join("pids")) {
        // Only a process whose command line names this run folder is ours: pids are reused.
        if pid_alive(pid) && cmdline(pid).is_some_and(|c| c.contains(&dir_str)) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            killed += 1;
        }
    }
    // A node of that run (crate::node) leaves containers, mounts and machine-wide rules that
    // its processes' death does not remove.
    crate::node::sweep_dead(dir);
    if remove {
        let _ = std::fs::remove_dir_all(dir);
    } else {
        let _ = std::fs::remove_file(dir.join("pids"));
    }
    Some(killed)
}

/// How long a run folder without a readable `owner.pid` counts as being set up by a live
/// owner: the folder is created a moment before the file is written, and another test process
/// sweeping in that moment must not delete a control plane that is starting.
const SETUP_GRACE: std::time::Duration = std::time::Duration::from_secs(120);

/// True when the process named in `owner.pid` still runs, or the folder is still being set up.
pub fn owner_alive(dir: &Path) -> bool {
    match std::fs::read_to_string(dir.join("owner.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    {
        Some(pid) => pid_alive(pid) && owner_matches(pid, dir),
        None => being_set_up(dir),
    }
}

/// A folder created within the last `SETUP_GRACE` (by its modification time).
fn being_set_up(dir: &Path) -> bool {
    std::fs::metadata(dir)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < SETUP_GRACE)
}

/// The owner pid file is written by the owning process at start; a recycled pid belongs to
/// another process whose start time is later than the folder's creation.
fn owner_matches(pid: i32, dir: &Path) -> bool {
    let started = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (
        started(Path::new(&format!("/proc/{pid}"))),
        started(&dir.join("owner.pid")),
    ) {
        (Some(proc_start), Some(folder_written)) => proc_start <= folder_written,
        _ => true,
    }
}

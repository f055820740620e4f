//! Child processes that cannot outlive the control plane that started them.
//!
//! Three layers, because a test process can die in ways no destructor sees (SIGKILL, abort):
//! 1. Each child gets its own process group, so a stop kills it and anything it forked.
//! 2. In `Lifetime::TiedToProcess` mode each child gets PR_SET_PDEATHSIG(SIGKILL). The kernel
//!    sends that signal when the *thread* that forked the child exits, so children are forked
//!    from one spawner thread that lives as long as the process does (a tokio test thread would
//!    end with its test and take the control plane down with it).
//! 3. Every child's pid is written to the run folder; the next harness start sweeps folders
//!    whose owner died (see `sweep`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::Error;

/// Whether children die with the process that started them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    /// Killed by the kernel when this process exits (tests).
    TiedToProcess,
    /// Outlives this process; stopped explicitly (`controlplane start` / `stop`).
    Detached,
}

/// A running child process in its own process group.
#[derive(Debug)]
pub struct Supervised {
    pub name: String,
    child: Child,
}

impl Supervised {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM to the group, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let pgid = Pid::from_raw(self.child.id() as i32);
        let _ = killpg(pgid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.is_running() {
                // The leader is gone; make sure nothing it forked stays behind.
                let _ = killpg(pgid, Signal::SIGKILL);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// The one long-lived thread that forks tied children (see the module docs).
fn spawner() -> &'static mpsc::Sender<SpawnRequest> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("controlplane-spawner".into())
            .spawn(move || {
                // Lives until the process exits: the Sender sits in a static and is never dropped.
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| eprintln!("controlplane: cannot start the spawner thread: {e}"));
        tx
    })
}

/// Starts `cmd` with its output appended to `log`, in its own process group, and records its
/// pid in `pids_file`.
pub fn spawn(
    name: &str,
    mut cmd: Command,
    log: &Path,
    pids_file: &Path,
    lifetime: Lifetime,
) -> Result<Supervised, Error> {
    let out = File::create(log).map_err(|e| Error::io(format!("create {}", log.display()), e))?;
    let err = out
        .try_clone()
        .map_err(|e| Error::io("dup log handle", e))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let tied = lifetime == Lifetime::TiedToProcess;
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (setpgid, prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if tied {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl.
                if libc::getppid() == 1 {
                    return Err(std::io::Error::other("parent exited during spawn"));
                }
            }
            Ok(())
        });
    }
    let child = if tied {
        let (tx, rx) = mpsc::channel();
        spawner()
            .send((cmd, tx))
            .map_err(|_| Error::Spawn(name.to_string(), "spawner thread is gone".into()))?;
        rx.recv()
            .map_err(|_| Error::Spawn(name.to_string(), "spawner thread is gone".into()))?
    } else {
        cmd.spawn()
    }
    .map_err(|e| Error::Spawn(name.to_string(), e.to_string()))?;
    record_pid(pids_file, child.id())?;
    Ok(Supervised {
        name: name.to_string(),
        child,
    })
}

fn record_pid(pids_file: &Path, pid: u32) -> Result<(), Error> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(pids_file)
        .map_err(|e| Error::io(format!("open {}", pids_file.display()), e))?;
    writeln!(f, "{pid}").map_err(|e| Error::io("record pid", e))
}

/// The pids recorded in a run folder's pid file.
pub fn recorded_pids(pids_file: &Path) -> Vec<i32> {
    std::fs::read_to_string(pids_file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// True when a process with this pid exists (zombies included).
pub fn pid_alive(pid: i32) -> bool {
    PathBuf::from(format!("/proc/{pid}")).exists()
}

/// The command line of a live process, to check a pid still names what we started.
pub fn cmdline(pid: i32) -> Option<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
}

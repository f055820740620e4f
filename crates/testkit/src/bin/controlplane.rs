//! `controlplane`: a local Kubernetes control plane for scripts and people.
//!
//!     controlplane start [--dir D] [--node]  start in the background (idempotent), print the kubeconfig path
//!     controlplane kubeconfig [--dir D] print the kubeconfig path of a running control plane
//!     controlplane stop [--dir D]       stop it and everything it started
//!     controlplane run [--dir D]        run in the foreground until SIGTERM/SIGINT
//!
//! D defaults to `$LINKTOKEN_CONTROLPLANE_DIR`, else `.local/controlplane` under the current folder.
//! `--node` also runs a node (containerd, kubelet, kube-scheduler, kube-proxy; root only, one per
//! machine) so that Pods run: the API server then listens on the machine's own address, written
//! to D/node-ip; images are loaded with `ctr --address D/node/containerd/containerd.sock -n k8s.io
//! images import`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use testkit::controlplane::{ControlPlane, Lifetime, Options, process, sweep};
use testkit::node::Node;

#[derive(Parser)]
#[command(
    name = "controlplane",
    about = "A local etcd + kube-apiserver + kube-controller-manager"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start in the background and print the kubeconfig path (does nothing if already running).
    Start(DirArg),
    /// Print the kubeconfig path of the running control plane.
    Kubeconfig(DirArg),
    /// Stop the control plane and everything it started.
    Stop(DirArg),
    /// Run in the foreground until SIGTERM or SIGINT.
    Run(DirArg),
}

#[derive(clap::Args)]
struct DirArg {
    /// The run folder (kubeconfig, logs, data).
    #[arg(
        long,
        env = "LINKTOKEN_CONTROLPLANE_DIR",
        default_value = ".local/controlplane"
    )]
    dir: PathBuf,
    /// Also run a node, so that Pods run (root only; one per machine).
    #[arg(long)]
    node: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Start(a) => start(&a.dir, a.node),
        Cmd::Kubeconfig(a) => kubeconfig(&a.dir),
        Cmd::Stop(a) => stop(&a.dir),
        Cmd::Run(a) => run(&a.dir, a.node),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("controlplane: {e}");
            ExitCode::FAILURE
        }
    }
}

fn start(dir: &Path, node: bool) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let dir = dir.canonicalize().map_err(|e| e.to_string())?;
    if sweep::owner_alive(&dir) && dir.join("ready").exists() {
        eprintln!("controlplane: already running in {}", dir.display());
        return kubeconfig(&dir);
    }
    // A dead earlier run in this folder: kill what it left, keep its data.
    sweep::sweep_if_dead(&dir, false);
    let _ = std::fs::remove_file(dir.join("ready"));
    let _ = std::fs::remove_file(dir.join("failed"));
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let log = std::fs::File::create(dir.join("controlplane.log")).map_err(|e| e.to_string())?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.arg("run").arg("--dir").arg(&dir);
    if node {
        cmd.arg("--node");
    }
    cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
    // SAFETY: setsid is async-signal-safe; it detaches the runner from our terminal and group
    // so it outlives this command.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| format!("spawn runner: {e}"))?;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(180) {
        if dir.join("ready").exists() {
            eprintln!(
                "controlplane: ready in {:.1}s",
                started.elapsed().as_secs_f64()
            );
            return kubeconfig(&dir);
        }
        if let Ok(why) = std::fs::read_to_string(dir.join("failed")) {
            return Err(why);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "not ready after 180s; see {}",
        dir.join("controlplane.log").display()
    ))
}

fn kubeconfig(dir: &Path) -> Result<(), String> {
    let kc = dir.join("kubeconfig");
    if !(sweep::owner_alive(dir) && dir.join("ready").exists()) {
        return Err(format!("no control plane is running in {}", dir.display()));
    }
    println!("{}", kc.canonicalize().unwrap_or(kc).display());
    Ok(())
}

fn stop(dir: &Path) -> Result<(), String> {
    let Ok(pid) = std::fs::read_to_string(dir.join("owner.pid")) else {
        eprintln!("controlplane: nothing to stop in {}", dir.display());
        return Ok(());
    };
    if let Ok(pid) = pid.trim().parse::<i32>()
        && sweep::owner_alive(dir)
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        let started = Instant::now();
        while process::pid_alive(pid) && started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Whatever is still recorded (runner killed hard, say) goes now.
    sweep::sweep_if_dead(dir, false);
    let _ = std::fs::remove_file(dir.join("ready"));
    eprintln!("controlplane: stopped");
    Ok(())
}

fn run(dir: &Path, with_node: bool) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let node_ip = if with_node {
        Some(testkit::node::machine_ip().map_err(|e| e.to_string())?)
    } else {
        None
    };
    let opts = Options {
        lifetime: Lifetime::TiedToProcess,
        dir: Some(dir.to_path_buf()),
        node_ip,
        ..Options::default()
    };
    let mut cp = match ControlPlane::start(opts) {
        Ok(cp) => cp,
        Err(e) => {
            let _ = std::fs::write(dir.join("failed"), e.to_string());
            return Err(e.to_string());
        }
    };
    // Declared after the control plane so that it is dropped (torn down) first.
    let mut node = None;
    if let Some(ip) = node_ip {
        let started = Node::check(&cp).and_then(|()| Node::start(&cp, Duration::from_secs(120)));
        match started {
            Ok(n) => {
                eprintln!(
                    "controlplane: node ready in {:.1}s",
                    n.start_time.as_secs_f64()
                );
                node = Some(n);
            }
            Err(e) => {
                let _ = std::fs::write(dir.join("failed"), e.to_string());
                cp.stop(true);
                return Err(e.to_string());
            }
        }
        std::fs::write(dir.join("node-ip"), ip.to_string()).map_err(|e| e.to_string())?;
    }
    std::fs::write(dir.join("ready"), "").map_err(|e| e.to_string())?;
    eprintln!(
        "controlplane: ready; kubeconfig {}",
        cp.kubeconfig_path().display()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| e.to_string())?;
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        Ok::<(), String>(())
    })?;
    let _ = std::fs::remove_file(dir.join("ready"));
    if let Some(mut n) = node.take() {
        n.stop();
    }
    let _ = std::fs::remove_file(dir.join("node-ip"));
    cp.stop(true);
    Ok(())
}

//! `controlplane`: a local Kubernetes control plane for scripts and people.
//!
//!     controlplane start [--dir D]      start in the background (idempotent), print the kubeconfig path
//!     controlplane kubeconfig [--dir D] print the kubeconfig path of a running control plane
//!     controlplane stop [--dir D]       stop it and everything it started
//!     controlplane run [--dir D]        run in the foreground until SIGTERM/SIGINT
//!
//! D defaults to `$LINKTOKEN_CONTROLPLANE_DIR`, else `.local/controlplane` under the current folder.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use testkit::controlplane::{ControlPlane, Lifetime, Options, process, sweep};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Start(a) => start(&a.dir),
        Cmd::Kubeconfig(a) => kubeconfig(&a.dir),
        Cmd::Stop(a) => stop(&a.dir),
        Cmd::Run(a) => run(&a.dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("controlplane: {e}");
            ExitCode::FAILURE
        }
    }
}

fn start(dir: &Path) -> Result<(), String> {
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
    cmd.arg("run")
        .arg("--dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
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

fn run(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let opts = Options {
        lifetime: Lifetime::TiedToProcess,
        dir: Some(dir.to_path_buf()),
        ..Options::default()
    };
    let mut cp = match ControlPlane::start(opts) {
        Ok(cp) => cp,
        Err(e) => {
            let _ = std::fs::write(dir.join("failed"), e.to_string());
            return Err(e.to_string());
        }
    };
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
    cp.stop(true);
    Ok(())
}

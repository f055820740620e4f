//! The one way the harness starts the operator: its real binary as a child process that dies
//! with the thread that spawned it (even when the test process is killed), logging to a file.
//! Tests and the benchmark add their own flags and environment on top.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube::Resource;
use linktoken_operator::api::LinkToken;

/// Overrides where the operator binary is looked for.
pub const BINARY_ENV: &str = "LINKTOKEN_OPERATOR_BIN";

/// The environment variable of the operator's test-only pause hook (compiled in only with the
/// `fault-injection` feature). Never inherited from the caller: a test sets it explicitly.
pub const PAUSE_ENV: &str = "LINKTOKEN_TEST_PAUSE";

/// The operator binary: `$LINKTOKEN_OPERATOR_BIN`, else `linktoken-operator` in the cargo
/// profile folder of the running executable (an integration test runs from `<profile>/deps`,
/// the benchmark from `<profile>`). Cargo builds it before the operator's integration tests.
pub fn binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(BINARY_ENV) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("linktoken-operator"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "no linktoken-operator binary next to {} (build it: cargo build -p linktoken-operator, or set {BINARY_ENV})",
                exe.display()
            )
        })
}

/// The address the operator logged for one of its listeners (`metrics` or `probes`; tests bind
/// port 0), waiting up to 30 s for the line.
pub fn logged_endpoint(log: &Path, endpoint: &str) -> Result<String, String> {
    let needle = format!("endpoint=\"{endpoint}\" addr=");
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(i) = text.find(&needle) {
            let rest = &text[i + needle.len()..];
            return Ok(rest.chars().take_while(|c| !c.is_whitespace()).collect());
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "the operator did not log its {endpoint} address:\n{text}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What to run: the binary, its kubeconfig, flags and environment.
pub struct OperatorCommand {
    binary: PathBuf,
    kubeconfig: PathBuf,
    rust_log: String,
    env: Vec<(OsString, OsString)>,
    args: Vec<OsString>,
}

impl OperatorCommand {
    /// The operator against `atlas_url`, watching `namespaces`, with probes and metrics on
    /// free loopback ports.
    pub fn new(binary: &Path, kubeconfig: &Path, atlas_url: &str, namespaces: &[&str]) -> Self {
        OperatorCommand {
            binary: binary.to_path_buf(),
            kubeconfig: kubeconfig.to_path_buf(),
            // LINKTOKEN_TEST_RUST_LOG raises it for a run being diagnosed (e.g.
            // `linktoken_operator=debug`: one line per reconciled outcome).
            rust_log: std::env::var("LINKTOKEN_TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
            env: Vec::new(),
            args: vec![
                format!("--atlas-url={atlas_url}").into(),
                format!("--watch-namespaces={}", namespaces.join(",")).into(),
                "--metrics-bind-address=127.0.0.1:0".into(),
                "--health-probe-bind-address=127.0.0.1:0".into(),
            ],
        }
    }

    pub fn rust_log(mut self, filter: &str) -> Self {
        self.rust_log = filter.into();
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Starts the process; stdout and stderr go to `operator.log` in a folder it owns.
    pub fn spawn(self) -> std::io::Result<Operator> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("operator.log");
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(&self.binary);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", &self.rust_log)
            // Test traffic stays on this machine, and no ambient hook leaks in.
            .env_remove("HTTPS_PROXY")
            .env_remove("HTTP_PROXY")
            .env_remove("https_proxy")
            .env_remove("http_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .env_remove(PAUSE_ENV)
            .envs(self.env)
            .args(self.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: prctl only, between fork and exec. The operator dies with the thread that
        // started it, even when the test process is killed.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        Ok(Operator {
            child,
            log,
            _dir: dir,
        })
    }
}

/// The operator process; killed (SIGKILL) on drop. Its stdout+stderr go to `log`. When a test
/// panics, the tail of the log is printed (the operator's logs never hold secret values).
pub struct Operator {
    pub child: Child,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Operator {
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `http://<addr>/metrics` of this process.
    pub fn metrics_url(&self) -> String {
        let addr = logged_endpoint(&self.log, "metrics").unwrap_or_else(|e| panic!("{e}"));
        format!("http://{addr}/metrics")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.sigterm();
        self.wait_exit(within)
    }

    /// SIGTERM without waiting (the process drains meanwhile).
    pub fn sigterm(&self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }

    /// The exit status, once the process exited within `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Waits until the log holds `needle`; Err with the log when the time is up or the process
    /// exited.
    pub async fn wait_for_log(&mut self, needle: &str, within: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let text = self.logs();
            if text.contains(needle) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "operator exited ({status}) before '{needle}':\n{text}"
                ));
            }
            if start.elapsed() > within {
                return Err(format!(
                    "operator: no '{needle}' within {within:?}:\n{text}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let logs = self.logs();
            let lines: Vec<&str> = logs.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!(
                "---- operator log (last {} lines) ----\n{}\n----",
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

/// Ready=True for the current generation: what a user (and kstatus) takes as "the token
/// Secret holds a token for what I asked".
pub fn is_ready(lt: &LinkToken) -> bool {
    let generation = lt.meta().generation;
    lt.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == "Ready" && c.status == "True" && c.observed_generation == generation
        })
    })
}

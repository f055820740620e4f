//! TLS trust and HTTPS proxies, end to end: atlas-sim serves TLS with a CA generated for the
//! test (so no platform store trusts it), and the operator binary runs on the real control
//! plane. What a user depends on:
//! - `--atlas-ca-file` (or `SSL_CERT_FILE`) makes a private CA trusted: the LinkToken turns Ready;
//! - without it the LinkToken says so promptly: AtlasUnavailable naming the certificate
//!   problem, not a hang and not a misleading HTTP error;
//! - a CA file that cannot be used stops the operator at start-up with a clear message;
//! - with `HTTPS_PROXY`, every Atlas call goes through the proxy's CONNECT tunnel. The Atlas
//!   host name does not resolve on this machine (`.invalid`), only the proxy knows where it
//!   is, so a Ready LinkToken is itself proof that the path went through the proxy;
//! - a loopback Atlas URL or source never goes through a proxy, whatever the variables say.
use testkit::require_cluster;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atlas_sim::config::{DEMO_SOURCE_ORG_ID, DEMO_SOURCE_PRIVATE_KEY, DEMO_SOURCE_PUBLIC_KEY};
use atlas_sim::{SimConfig, SimServer, SimTls};
use linktoken_operator::api::Reason;
use testkit::e2e::{Env, ORG, condition, linktoken_yaml};
use testkit::{TestCluster, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(30);
/// A name reserved never to resolve (RFC 2606): only the test proxy maps it to atlas-sim.
const ATLAS_HOST: &str = "atlas-sim.invalid";

/// An Env whose atlas-sim speaks TLS with a fresh CA, and that CA written to a PEM file.
async fn tls_env(cluster: &'static TestCluster, prefix: &str) -> (Env, PathBuf, tempfile::TempDir) {
    cluster
        .apply_crd(&linktoken_operator::api::crd::crd())
        .await;
    let ns = cluster.namespace(prefix).await;
    let client = cluster.client().await;
    let tls = SimTls::generate(&[ATLAS_HOST]).expect("generate CA");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let sim = SimServer::start_tls(SimConfig::demo(), any, any, &tls)
        .await
        .expect("start atlas-sim with TLS");
    assert!(sim.atlas_url.starts_with("https://"), "{}", sim.atlas_url);
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &tls.ca_pem).expect("write CA");
    let env = Env {
        cluster,
        ns,
        client,
        sim,
        operator: None,
    };
    (env, ca, dir)
}

/// A PEM file with a CA that has nothing to do with atlas-sim's.
fn unrelated_ca(dir: &Path) -> PathBuf {
    let other = SimTls::generate(&[]).expect("generate CA");
    let path = dir.join("unrelated.pem");
    std::fs::write(&path, other.ca_pem).expect("write CA");
    path
}

/// The environment that makes `file` the whole platform store: SSL_CERT_FILE, and SSL_CERT_DIR
/// on an empty folder (rustls-native-certs reads both when set, and the machine may set the
/// latter to its own store).
fn platform_store(file: &Path, dir: &Path) -> Vec<(String, String)> {
    let empty = dir.join("empty-cert-dir");
    std::fs::create_dir_all(&empty).expect("mkdir");
    vec![
        ("SSL_CERT_FILE".into(), file.display().to_string()),
        ("SSL_CERT_DIR".into(), empty.display().to_string()),
    ]
}

fn pairs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn ready_message(lt: &linktoken_operator::api::LinkToken) -> String {
    lt.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_private_ca_is_trusted_only_through_the_ca_file_or_ssl_cert_file() {
    let c = require_cluster!();
    let (mut env, ca, dir) = tls_env(c, "e2e-tls").await;
    env.api_key_secret("creds").await;
    let unrelated = platform_store(&unrelated_ca(dir.path()), dir.path());
    let own_ca = platform_store(&ca, dir.path());

    // The platform's store (here SSL_CERT_FILE, so the machine's own store cannot matter)
    // does not hold the simulator's CA: a prompt, clear TLS failure.
    let started = Instant::now();
    env.operator =
        Some(env.spawn_operator_with_env(&env.cluster.kubeconfig, &pairs(&unrelated), &[]));
    env.linktoken("migration", ORG, &[]).await;
    let lt = env
        .wait_reason("migration", Reason::AtlasUnavailable, WAIT)
        .await;
    let took = started.elapsed();
    let message = ready_message(&lt);
    let logs = env.operator.as_ref().map(|o| o.logs()).unwrap_or_default();
    assert!(
        logs.contains("platform_roots=1 ") && logs.contains("ca_file_roots=0"),
        "SSL_CERT_FILE should be the platform store:\n{logs}"
    );
    assert!(
        message.contains("TLS") && message.contains("certificate"),
        "the message should name the TLS certificate problem: {message}"
    );
    assert!(
        message.to_ascii_lowercase().contains("unknownissuer")
            || message.contains("unknown issuer"),
        "the message should say the issuer is unknown: {message}"
    );
    assert!(took < Duration::from_secs(25), "took {took:?}");
    assert_eq!(
        env.atlas_calls(),
        0,
        "no HTTP request may pass an untrusted handshake"
    );
    assert!(env.token_in("migration", "linkToken").await.is_none());

    // The same operator configuration plus --atlas-ca-file: Ready.
    env.operator.take();
    env.operator = Some(env.spawn_operator_with_env(
        &env.cluster.kubeconfig,
        &pairs(&unrelated),
        &[&format!("--atlas-ca-file={}", ca.display())],
    ));
    env.wait_ready("migration").await;
    let first = env.token_in("migration", "linkToken").await.expect("token");
    assert!(env.sim.state.is_token_live(&first));
    let logs = env.operator.as_ref().map(|o| o.logs()).unwrap_or_default();
    assert!(
        logs.contains("Atlas TLS roots loaded platform_roots=1 ")
            && logs.contains("ca_file_roots=1"),
        "the start-up log should say where the roots come from:\n{logs}"
    );

    // No flag, the CA as the platform store (SSL_CERT_FILE): trusted too. A rotation proves a
    // new call succeeded under this configuration.
    env.operator.take();
    env.operator = Some(env.spawn_operator_with_env(&env.cluster.kubeconfig, &pairs(&own_ca), &[]));
    env.rotate("migration", "1").await;
    testkit::eventually(WAIT, "a rotated token", || async {
        let t = env.token_in("migration", "linkToken").await?;
        (t != first).then_some(())
    })
    .await;
    env.assert_at_most_one_link_per_org();
}

#[tokio::test]
async fn an_unusable_ca_file_stops_the_operator_at_start_up() {
    let c = require_cluster!();
    let (env, _ca, dir) = tls_env(c, "e2e-tls-bad").await;
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").expect("write");
    for (file, expect) in [
        (dir.path().join("missing.pem"), "cannot read it"),
        (empty, "holds no PEM certificate"),
    ] {
        let arg = format!("--atlas-ca-file={}", file.display());
        let mut op = env.spawn_operator(&[&arg]);
        let status = wait_exit(&mut op, WAIT).await;
        assert!(!status.success(), "the operator must not run: {status}");
        let logs = op.logs();
        assert!(
            logs.contains("--atlas-ca-file") && logs.contains(&file.display().to_string()),
            "the error should name the flag and the file:\n{logs}"
        );
        assert!(logs.contains(expect), "expected {expect:?}:\n{logs}");
    }
}

async fn wait_exit(
    op: &mut testkit::operator::Operator,
    within: Duration,
) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Ok(Some(s)) = op.child.try_wait() {
            return s;
        }
        assert!(
            start.elapsed() < within,
            "the operator still runs after {within:?}:\n{}",
            op.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn https_proxy_carries_every_atlas_call_through_connect() {
    let c = require_cluster!();
    let (mut env, ca, _dir) = tls_env(c, "e2e-proxy").await;
    env.api_key_secret("creds").await;
    let proxy = ConnectProxy::start(ATLAS_HOST).await;
    let port = env.sim.atlas_addr.port();
    let atlas_url = format!("https://{ATLAS_HOST}:{port}");
    let proxy_url = format!("http://{}", proxy.addr);

    env.operator = Some(env.spawn_operator_with_env(
        &env.cluster.kubeconfig,
        &[("HTTPS_PROXY", &proxy_url)],
        &[
            // The last --atlas-url wins over the harness's loopback one.
            &format!("--atlas-url={atlas_url}"),
            &format!("--atlas-ca-file={}", ca.display()),
        ],
    ));
    env.linktoken("migration", ORG, &["10.0.0.1"]).await;
    env.wait_ready("migration").await;
    let token = env.token_in("migration", "linkToken").await.expect("token");
    assert!(env.sim.state.is_token_live(&token));

    let log = proxy.log();
    let tunnel = format!("CONNECT {ATLAS_HOST}:{port}");
    assert!(
        log.iter().any(|l| l == &tunnel),
        "the proxy log should show {tunnel:?}: {log:#?}"
    );
    // Out of a cluster (a kubeconfig), the Kubernetes connection takes HTTPS_PROXY too.
    assert!(
        log.iter().any(|l| l.starts_with("CONNECT 127.0.0.1:")),
        "the API server connection should be tunnelled as well: {log:#?}"
    );
    assert!(
        !log.iter().any(|l| l.starts_with("REFUSED")),
        "only CONNECT tunnels are expected: {log:#?}"
    );

    // NO_PROXY naming the Atlas host sends the client around the proxy: the name does not
    // resolve, so the rotation fails as AtlasUnavailable and the proxy sees no new tunnel.
    env.operator.take();
    let tunnels_before = proxy.count(&tunnel);
    env.operator = Some(env.spawn_operator_with_env(
        &env.cluster.kubeconfig,
        &[("HTTPS_PROXY", &proxy_url), ("NO_PROXY", ATLAS_HOST)],
        &[
            &format!("--atlas-url={atlas_url}"),
            &format!("--atlas-ca-file={}", ca.display()),
        ],
    ));
    env.rotate("migration", "1").await;
    env.wait_reason("migration", Reason::AtlasUnavailable, WAIT)
        .await;
    assert_eq!(proxy.count(&tunnel), tunnels_before, "{:#?}", proxy.log());
}

/// Loopback destinations never go through a proxy: with `HTTP_PROXY` and `ALL_PROXY` naming a
/// recording proxy, the harness's `http://127.0.0.1` Atlas URL and an `http://localhost` source
/// are reached directly (Ready, Linked) and the proxy sees no connection at all. Through a
/// proxy, the Digest exchanges and the link token would cross the network in clear, to a proxy
/// that cannot reach the operator's loopback anyway.
#[tokio::test]
async fn loopback_atlas_and_source_urls_never_go_through_a_proxy() {
    let c = require_cluster!();
    let mut env = Env::new(c, "e2e-proxy-loopback").await;
    env.api_key_secret("creds").await;
    env.put_secret(
        "source-creds",
        &[
            ("publicApiKey", DEMO_SOURCE_PUBLIC_KEY),
            ("privateApiKey", DEMO_SOURCE_PRIVATE_KEY),
        ],
    )
    .await;
    assert!(
        env.sim.atlas_url.starts_with("http://127.0.0.1:"),
        "{}",
        env.sim.atlas_url
    );
    let source_port = env.sim.source_addr.expect("atlas-sim's source port").port();
    let proxy = ConnectProxy::start(ATLAS_HOST).await;
    let proxy_url = format!("http://{}", proxy.addr);
    // The source by its loopback name: the one the cluster admin allows here.
    let allowed = format!("--allowed-source-urls=http://localhost:{source_port}");
    env.operator = Some(env.spawn_operator_with_env(
        &env.cluster.kubeconfig,
        // NO_PROXY set and empty: whatever this machine's says, nothing is exempt by name.
        &[
            ("HTTP_PROXY", &proxy_url),
            ("ALL_PROXY", &proxy_url),
            ("NO_PROXY", ""),
        ],
        &[&allowed],
    ));
    let source = format!(
        "  source:\n    url: \"http://localhost:{source_port}\"\n    orgId: \"{DEMO_SOURCE_ORG_ID}\"\n    credentialsSecretRef:\n      name: source-creds\n"
    );
    env.apply_yaml(&linktoken_yaml("migration", ORG, &[], "creds", &source))
        .await;
    let lt = eventually(WAIT, "Linked without the proxy", || async {
        // The first request the proxy sees ends the test: it must see none.
        assert_eq!(proxy.connections(), 0, "proxied: {:#?}", proxy.log());
        let lt = env.get("migration").await?;
        (condition(&lt, "Ready").1 == Reason::Linked.as_str()).then_some(lt)
    })
    .await;
    assert_eq!(condition(&lt, "Linked").0, "True");
    let token = env.token_in("migration", "linkToken").await.expect("token");
    assert!(env.sim.state.is_token_live(&token));
    assert!(env.sim.state.source_link(DEMO_SOURCE_ORG_ID).is_some());
    assert_eq!(proxy.connections(), 0, "proxied: {:#?}", proxy.log());
}

/// A minimal HTTP CONNECT proxy: counts connections, logs each request line, maps one alias to
/// 127.0.0.1, then copies bytes both ways. Anything but CONNECT is refused (and logged as
/// REFUSED).
struct ConnectProxy {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConnectProxy {
    async fn start(alias: &'static str) -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let task = {
            let log = log.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                while let Ok((conn, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::SeqCst);
                    let log = log.clone();
                    tokio::spawn(async move {
                        let _ = tunnel(conn, alias, &log).await;
                    });
                }
            })
        };
        ConnectProxy {
            addr,
            connections,
            log,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }

    fn count(&self, line: &str) -> usize {
        self.log().iter().filter(|l| *l == line).count()
    }
}

async fn tunnel(
    mut client: TcpStream,
    alias: &str,
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = client.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().next().unwrap_or_default().to_owned();
    let mut parts = line.split_whitespace();
    let target = match (parts.next(), parts.next()) {
        (Some("CONNECT"), Some(target)) => target.to_owned(),
        _ => {
            log.lock().expect("log").push(format!("REFUSED {line}"));
            client
                .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
                .await?;
            return Ok(());
        }
    };
    log.lock().expect("log").push(format!("CONNECT {target}"));
    let Some((host, port)) = target.rsplit_once(':') else {
        client
            .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .await?;
        return Ok(());
    };
    let host = if host == alias {
        "127.0.0.1"
    } else {
        host.trim_start_matches('[').trim_end_matches(']')
    };
    let port: u16 = port.parse().unwrap_or(0);
    let mut upstream = match TcpStream::connect((host, port)).await {
        Ok(s) => s,
        Err(_) => {
            client
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
                .await?;
            return Ok(());
        }
    };
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

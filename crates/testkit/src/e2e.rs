//! End-to-end fixtures: the real control plane, atlas-sim in-process, and the operator binary
//! as its own process watching only the test's namespace (so parallel tests never share an
//! operator).

use std::collections::BTreeMap;
use std::time::Duration;

use atlas_sim::{
    ApiKeyConfig, ORG_OWNER, OrgConfig, SimConfig, SimHandle, SimServer, TokenStatus, roles,
};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use linktoken_operator::api::{LinkToken, Reason};

pub use crate::operator::Operator;
use crate::operator::OperatorCommand;
use crate::{TestCluster, eventually};

/// The demo org and API key of `SimConfig::demo()`.
pub const ORG: &str = "5f1e9b2a3c4d5e6f7a8b9c0d";
pub const PUBLIC_KEY: &str = "demopublic";
pub const PRIVATE_KEY: &str = "demo-private-key-0000";
pub const CLIENT_ID: &str = "mdb_sa_id_demo";
pub const CLIENT_SECRET: &str = "mdb_sa_sk_demo";

pub struct Env {
    pub cluster: &'static TestCluster,
    pub ns: String,
    pub client: Client,
    pub sim: SimHandle,
    pub operator: Option<Operator>,
}

impl Env {
    /// A namespace, the CRD, and an atlas-sim with the demo org and principals.
    pub async fn new(cluster: &'static TestCluster, prefix: &str) -> Env {
        Env::with_sim_config(cluster, prefix, SimConfig::demo()).await
    }

    pub async fn with_sim_config(
        cluster: &'static TestCluster,
        prefix: &str,
        cfg: SimConfig,
    ) -> Env {
        cluster
            .apply_crd(&linktoken_operator::api::crd::crd())
            .await;
        let ns = cluster.namespace(prefix).await;
        let client = cluster.client().await;
        let any = "127.0.0.1:0".parse().expect("addr");
        let sim = SimServer::start(cfg, any, any)
            .await
            .expect("start atlas-sim");
        Env {
            cluster,
            ns,
            client,
            sim,
            operator: None,
        }
    }

    /// A LinkToken `migration` for ORG (credentials Secret `creds`, the demo API key) that is
    /// Ready under a running operator, and the token it holds (live in atlas-sim). None when no
    /// control plane is available outside CI.
    pub async fn ready(prefix: &str, ips: &[&str], extra_spec: &str) -> Option<(Env, String)> {
        let c = crate::cluster().await?;
        let mut env = Env::new(c, prefix).await;
        env.api_key_secret("creds").await;
        env.start_operator(&[]);
        env.apply_yaml(&linktoken_yaml("migration", ORG, ips, "creds", extra_spec))
            .await;
        env.wait_ready("migration").await;
        let token = env.token_in("migration", "linkToken").await.expect("token");
        assert!(env.sim.state.is_token_live(&token));
        Some((env, token))
    }

    /// atlas-sim says this token was revoked.
    pub fn revoked(&self, token: &str) -> bool {
        matches!(
            self.sim.state.token_status(token),
            TokenStatus::Revoked { .. }
        )
    }

    /// Adds an org owned by the demo API key and service account (so a test can use an org of
    /// its own).
    pub fn add_owned_org(&self, org: &str) {
        self.sim
            .state
            .add_org(OrgConfig::new(org, "test org"))
            .expect("add org");
        self.sim
            .state
            .add_api_key(ApiKeyConfig::new(
                &format!("pub{}", &org[..8]),
                "private-key-of-a-test-org",
                roles(org, ORG_OWNER),
            ))
            .expect("add key");
    }

    /// Starts the operator binary for this namespace with fast retries.
    pub fn start_operator(&mut self, extra: &[&str]) -> &mut Operator {
        let op = self.spawn_operator(extra);
        self.operator = Some(op);
        self.operator.as_mut().expect("operator")
    }

    /// Spawns an operator process without keeping it in `self` (e.g. a second replica).
    pub fn spawn_operator(&self, extra: &[&str]) -> Operator {
        self.spawn_operator_with_kubeconfig(&self.cluster.kubeconfig, extra)
    }

    /// Like `spawn_operator`, but the operator authenticates with `kubeconfig` instead of the
    /// cluster admin's (the packaging tests run it with a ServiceAccount token only, to prove
    /// the chart's RBAC is enough).
    pub fn spawn_operator_with_kubeconfig(
        &self,
        kubeconfig: &std::path::Path,
        extra: &[&str],
    ) -> Operator {
        self.spawn_operator_with_env(kubeconfig, &[], extra)
    }

    /// Spawns the operator for this namespace: atlas-sim, fast retries, debug logs, plus extra
    /// environment variables (e.g. the test-only pause hook) and flags.
    pub fn spawn_operator_with_env(
        &self,
        kubeconfig: &std::path::Path,
        vars: &[(&str, &str)],
        extra: &[&str],
    ) -> Operator {
        let binary = crate::operator::binary().unwrap_or_else(|e| panic!("{e}"));
        let mut cmd = OperatorCommand::new(&binary, kubeconfig, &self.sim.atlas_url, &[&self.ns])
            .rust_log("info,linktoken_operator=debug")
            .args([
                "--retry-base-delay=500ms",
                "--retry-max-delay=5s",
                "--shutdown-timeout=5s",
                // A process that finds another's in-flight marker waits this (plus a margin)
                // before it revokes and reissues: kept short so crash tests converge quickly.
                "--atlas-request-timeout=8s",
            ]);
        // atlas-sim's source side is the one source the cluster admin allows here (a test
        // that needs another passes its own --allowed-source-urls, which overrides this).
        if let Some(source) = self.sim.source_url() {
            cmd = cmd.args([format!("--allowed-source-urls={source}")]);
        }
        let mut cmd = cmd.args(extra.iter().copied());
        for (k, v) in vars {
            cmd = cmd.env(k, v);
        }
        cmd.spawn().expect("spawn operator")
    }

    pub fn linktokens(&self) -> Api<LinkToken> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Creates (or replaces) a Secret with string data.
    pub async fn put_secret(&self, name: &str, data: &[(&str, &str)]) {
        let s = data_secret(name, data);
        let mut body = serde_json::to_value(&s).expect("json");
        body["apiVersion"] = "v1".into();
        body["kind"] = "Secret".into();
        // Replace the data wholesale: delete then create keeps tests free of merge semantics.
        let _ = self.secrets().delete(name, &DeleteParams::default()).await;
        eventually(Duration::from_secs(10), "old secret gone", || async {
            self.secrets()
                .get_opt(name)
                .await
                .ok()?
                .is_none()
                .then_some(())
        })
        .await;
        self.secrets()
            .create(&PostParams::default(), &s)
            .await
            .expect("create secret");
    }

    pub async fn api_key_secret(&self, name: &str) {
        self.put_secret(
            name,
            &[("publicApiKey", PUBLIC_KEY), ("privateApiKey", PRIVATE_KEY)],
        )
        .await;
    }

    /// Creates Secret `name` in namespace `ns` (another tenant's namespace).
    pub async fn put_secret_in(&self, ns: &str, name: &str, data: &[(&str, &str)]) {
        Api::<Secret>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), &data_secret(name, data))
            .await
            .expect("create secret");
    }

    /// Creates the API key credentials Secret `name` in namespace `ns`.
    pub async fn api_key_secret_in(&self, ns: &str, name: &str) {
        let data = [("publicApiKey", PUBLIC_KEY), ("privateApiKey", PRIVATE_KEY)];
        self.put_secret_in(ns, name, &data).await;
    }

    /// Applies a LinkToken from YAML (server-side apply, like `kubectl apply --server-side`).
    pub async fn apply_yaml(&self, yaml: &str) -> LinkToken {
        let lt: LinkToken = serde_saphyr::from_str(yaml).expect("LinkToken yaml");
        let name = lt.metadata.name.clone().expect("name");
        let mut body = serde_json::to_value(&lt).expect("json");
        body["apiVersion"] = "atlasmigration.io/v1alpha1".into();
        body["kind"] = "LinkToken".into();
        self.linktokens()
            .patch(
                &name,
                &PatchParams::apply("linktoken-tests").force(),
                &Patch::Apply(&body),
            )
            .await
            .expect("apply LinkToken")
    }

    /// A plain LinkToken for `org` with API-key credentials Secret `creds`.
    pub async fn linktoken(&self, name: &str, org: &str, ips: &[&str]) -> LinkToken {
        let ips = serde_json::to_string(ips).expect("ips");
        self.apply_yaml(&format!(
            "apiVersion: atlasmigration.io/v1alpha1\nkind: LinkToken\nmetadata:\n  name: {name}\nspec:\n  orgId: \"{org}\"\n  accessListIps: {ips}\n  credentialsSecretRef:\n    name: creds\n"
        ))
        .await
    }

    pub async fn get(&self, name: &str) -> Option<LinkToken> {
        self.linktokens()
            .get_opt(name)
            .await
            .expect("get LinkToken")
    }

    /// Waits until the Ready condition has `reason` (for the current generation).
    pub async fn wait_reason(&self, name: &str, reason: Reason, within: Duration) -> LinkToken {
        eventually(within, &format!("{name} Ready reason {reason}"), || async {
            let lt = self.get(name).await?;
            let gen_ = lt.meta().generation;
            let st = lt.status.as_ref()?;
            let c = st.conditions.iter().find(|c| c.type_ == "Ready")?;
            (c.reason == reason.as_str() && c.observed_generation == gen_).then_some(lt.clone())
        })
        .await
    }

    pub async fn wait_ready(&self, name: &str) -> LinkToken {
        self.wait_reason(name, Reason::TokenIssued, Duration::from_secs(30))
            .await
    }

    /// The token stored in a Secret at `key`.
    pub async fn token_in(&self, secret: &str, key: &str) -> Option<String> {
        let s = self.secrets().get_opt(secret).await.expect("get secret")?;
        let v = s.data?.get(key)?.0.clone();
        String::from_utf8(v).ok()
    }

    /// Events of a LinkToken (reason, type, note).
    pub async fn events(&self, name: &str) -> Vec<(String, String, String)> {
        let api: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), &self.ns);
        let list = api.list(&Default::default()).await.expect("events");
        list.items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| {
                (
                    e.reason.unwrap_or_default(),
                    e.type_.unwrap_or_default(),
                    e.note.unwrap_or_default(),
                )
            })
            .collect()
    }

    /// The events of `name` once `wanted` holds for them. The operator publishes its Normal
    /// events off the reconcile's path, so they may land a moment after the status or the
    /// deletion they report: waits up to `within`, then fails showing the events there are.
    pub async fn wait_events(
        &self,
        name: &str,
        what: &str,
        within: Duration,
        wanted: impl Fn(&[(String, String, String)]) -> bool,
    ) -> Vec<(String, String, String)> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let events = self.events(name).await;
            if wanted(&events) {
                return events;
            }
            if std::time::Instant::now() > deadline {
                panic!("timed out waiting for events of {name}: {what}; there are {events:?}");
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// Total Atlas link-token calls the simulator answered so far.
    pub fn atlas_calls(&self) -> u64 {
        self.sim.state.calls_total()
    }

    /// Asserts no token or credential value appears in the operator's logs, in events or in
    /// any LinkToken status of this namespace.
    pub async fn assert_no_secret_leaked(&self, secrets: &[&str]) {
        let logs = self.operator.as_ref().map(|o| o.logs()).unwrap_or_default();
        let events = serde_json::to_string(&self.events_all().await).expect("json");
        let statuses: Vec<_> = self
            .linktokens()
            .list(&Default::default())
            .await
            .expect("list")
            .items
            .into_iter()
            .map(|l| l.status)
            .collect();
        let statuses = serde_json::to_string(&statuses).expect("json");
        for s in secrets.iter().filter(|s| !s.is_empty()) {
            assert!(!logs.contains(s), "operator log contains a secret value");
            assert!(!events.contains(s), "an event contains a secret value");
            assert!(!statuses.contains(s), "a status contains a secret value");
        }
    }

    async fn events_all(&self) -> Vec<k8s_openapi::api::events::v1::Event> {
        let api: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), &self.ns);
        api.list(&Default::default()).await.expect("events").items
    }
}

// ---- Helpers for the end-to-end suite (issue 6) ----------------------------------------------

/// A LinkToken in YAML, for `Env::apply_yaml`, using credentials Secret `creds`: `extra_spec` lines go under `spec:` as
/// written (indent them by two spaces).
/// A Secret named `name` holding `data` (as bytes).
pub fn data_secret(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    }
}

pub fn linktoken_yaml(
    name: &str,
    org: &str,
    ips: &[&str],
    creds: &str,
    extra_spec: &str,
) -> String {
    let ips = serde_json::to_string(ips).expect("ips");
    format!(
        "apiVersion: atlasmigration.io/v1alpha1\nkind: LinkToken\nmetadata:\n  name: {name}\nspec:\n  orgId: \"{org}\"\n  accessListIps: {ips}\n  credentialsSecretRef:\n    name: {creds}\n{extra_spec}"
    )
}

impl Env {
    /// Fails when any org in atlas-sim holds more than one live link (a leaked token).
    pub fn assert_at_most_one_link_per_org(&self) {
        let snap = self.sim.state.snapshot();
        for (org, o) in &snap.orgs {
            assert!(
                o.live_links <= 1,
                "org {org} has {} live links in atlas-sim (a leaked token)",
                o.live_links
            );
        }
    }

    /// Asserts no Atlas call is made during `window` (a LinkToken waiting for a user action
    /// must not poll Atlas). Run it concurrently with other checks where possible.
    pub async fn assert_quiet(&self, window: Duration) {
        let before = self.sim.state.calls_total();
        tokio::time::sleep(window).await;
        let after = self.sim.state.calls_total();
        assert_eq!(
            after,
            before,
            "atlas-sim answered {} call(s) during the {window:?} quiet window",
            after - before
        );
    }

    /// Replaces the data of an existing Secret in place (an update, not delete + create), as a
    /// user rotating credentials with `kubectl apply` would.
    pub async fn update_secret_data(&self, name: &str, data: &[(&str, &str)]) {
        let mut s = self.secrets().get(name).await.expect("get secret");
        s.data = Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        );
        self.secrets()
            .replace(name, &PostParams::default(), &s)
            .await
            .expect("replace secret");
    }

    /// Merge-patches a LinkToken (e.g. `{"spec": {...}}` or `{"metadata": {"annotations": ..}}`).
    pub async fn patch_linktoken(&self, name: &str, patch: serde_json::Value) {
        self.linktokens()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch LinkToken");
    }

    /// Makes `holder` the holder of Lease `name` in this namespace for an hour, as another
    /// replica would after a network partition of the leader.
    pub async fn take_lease(&self, name: &str, holder: &str) {
        use k8s_openapi::api::coordination::v1::Lease;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), &self.ns);
        let mut lease = leases.get(name).await.expect("Lease");
        let spec = lease.spec.as_mut().expect("spec");
        spec.holder_identity = Some(holder.into());
        spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        spec.lease_duration_seconds = Some(3600);
        leases
            .replace(name, &PostParams::default(), &lease)
            .await
            .expect("take the Lease");
    }

    /// Sets the `atlasmigration.io/rotate` annotation.
    pub async fn rotate(&self, name: &str, value: &str) {
        self.patch_linktoken(
            name,
            serde_json::json!({"metadata": {"annotations": {"atlasmigration.io/rotate": value}}}),
        )
        .await;
    }

    pub async fn delete_linktoken(&self, name: &str) {
        self.linktokens()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete LinkToken");
    }

    pub async fn delete_secret(&self, name: &str) {
        self.secrets()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete Secret");
    }

    pub async fn wait_linktoken_gone(&self, name: &str, within: Duration) {
        eventually(within, &format!("LinkToken {name} gone"), || async {
            self.get(name).await.is_none().then_some(())
        })
        .await;
    }

    pub async fn wait_secret_gone(&self, name: &str, within: Duration) {
        eventually(within, &format!("Secret {name} gone"), || async {
            self.secrets()
                .get_opt(name)
                .await
                .ok()?
                .is_none()
                .then_some(())
        })
        .await;
    }

    /// Waits until the Secret holds a token other than `old` that atlas-sim reports live.
    pub async fn wait_new_token(&self, secret: &str, old: &str, within: Duration) -> String {
        eventually(within, &format!("a new live token in {secret}"), || async {
            let t = self.token_in(secret, "linkToken").await?;
            (t != old && self.sim.state.is_token_live(&t)).then_some(t)
        })
        .await
    }

    /// The Ready condition's message and the Stalled condition's status of a LinkToken.
    pub async fn ready_message_and_stalled(&self, name: &str) -> (String, String) {
        let lt = self.get(name).await.expect("LinkToken");
        let st = lt.status.expect("status");
        let msg = st
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        let stalled = st
            .conditions
            .iter()
            .find(|c| c.type_ == "Stalled")
            .map(|c| c.status.clone())
            .unwrap_or_default();
        (msg, stalled)
    }

    /// Waits until an event with this reason and type exists for the LinkToken.
    pub async fn wait_event(&self, name: &str, reason: &str, type_: &str, within: Duration) {
        self.wait_events(name, &format!("{type_} event {reason}"), within, |events| {
            events.iter().any(|(r, t, _)| r == reason && t == type_)
        })
        .await;
    }

    /// Adds an API key to atlas-sim with `role` on `org`.
    pub fn add_api_key(&self, public: &str, private: &str, org: &str, role: &str) {
        self.sim
            .state
            .add_api_key(ApiKeyConfig::new(public, private, roles(org, role)))
            .expect("add API key");
    }

    /// Adds a fault to atlas-sim.
    pub fn fault(&self, spec: atlas_sim::FaultSpec) {
        self.sim.state.add_fault(spec).expect("add fault");
    }
}

/// A condition of a LinkToken as (status, reason, message); empty when absent.
pub fn condition(lt: &LinkToken, type_: &str) -> (String, String, String) {
    lt.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

/// A fault answering `status` (with an ApiError body) to link-token calls of `method`.
pub fn status_fault(
    status: u16,
    error_code: &str,
    method: Option<&str>,
    count: Option<u64>,
) -> atlas_sim::FaultSpec {
    atlas_sim::FaultSpec {
        kind: atlas_sim::FaultKind::Status,
        status: Some(status),
        body: Some(serde_json::json!({
            "error": status, "errorCode": error_code, "detail": format!("injected {error_code}"),
            "reason": "injected", "parameters": []
        })),
        headers: Default::default(),
        latency_ms: 0,
        count,
        method: method.map(str::to_string),
        org_id: None,
        target: atlas_sim::FaultTarget::LinkTokens,
    }
}

// ---- The invariants every adversarial test ends with (issue 13) -------------------------------

/// What a user depends on in a Secret the operator does not own: its identity, type, data and
/// every piece of metadata another controller (or the garbage collector) acts on.
#[derive(Clone, Debug, PartialEq)]
pub struct SecretSnapshot {
    pub uid: Option<String>,
    pub type_: Option<String>,
    pub data: Option<BTreeMap<String, ByteString>>,
    pub labels: Option<BTreeMap<String, String>>,
    pub annotations: Option<BTreeMap<String, String>>,
    pub owner_references:
        Option<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>,
    pub finalizers: Option<Vec<String>>,
}

impl SecretSnapshot {
    pub fn of(s: &Secret) -> SecretSnapshot {
        SecretSnapshot {
            uid: s.metadata.uid.clone(),
            type_: s.type_.clone(),
            data: s.data.clone(),
            labels: s.metadata.labels.clone(),
            annotations: s.metadata.annotations.clone(),
            owner_references: s.metadata.owner_references.clone(),
            finalizers: s.metadata.finalizers.clone(),
        }
    }
}

impl Env {
    /// A snapshot of a Secret of this namespace (it must exist), for `assert_invariants`.
    pub async fn snapshot_secret(&self, name: &str) -> SecretSnapshot {
        let s = self
            .secrets()
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("get Secret {name}: {e}"));
        SecretSnapshot::of(&s)
    }

    /// What the operator promises after anything a test did to it:
    /// - no org in atlas-sim holds more than one live link;
    /// - every LinkToken of this namespace that is Ready=True for its generation (and not being
    ///   deleted) has its token Secret holding a token atlas-sim reports live;
    /// - every `foreign` Secret (one the operator does not own: credentials, a user's own) is
    ///   unchanged: same object, same type, data, labels, annotations, ownerReferences and
    ///   finalizers, byte for byte.
    pub async fn assert_invariants(&self, foreign: &[(&str, SecretSnapshot)]) {
        self.assert_at_most_one_link_per_org();
        let lts = self
            .linktokens()
            .list(&Default::default())
            .await
            .expect("list LinkTokens");
        for lt in lts.items {
            if lt.metadata.deletion_timestamp.is_some() || !crate::operator::is_ready(&lt) {
                continue;
            }
            let name = lt.metadata.name.clone().unwrap_or_default();
            let secret = lt
                .status
                .as_ref()
                .and_then(|s| s.token_secret_name.clone())
                .unwrap_or_else(|| lt.spec.token_secret_name(&name));
            let key = lt.spec.token_secret_key();
            let token = self.token_in(&secret, key).await.unwrap_or_else(|| {
                panic!("LinkToken {name} is Ready but Secret {secret} holds no {key}")
            });
            assert!(
                self.sim.state.is_token_live(&token),
                "LinkToken {name} is Ready but the token in Secret {secret} is not live in atlas-sim"
            );
        }
        for (name, before) in foreign {
            let now = self
                .secrets()
                .get_opt(name)
                .await
                .expect("get Secret")
                .unwrap_or_else(|| panic!("foreign Secret {name} was deleted"));
            assert_eq!(
                &SecretSnapshot::of(&now),
                before,
                "foreign Secret {name} changed"
            );
        }
    }
}

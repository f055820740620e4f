//! End to end: `--concurrency` bounds the reconciles of the whole process, also with
//! `--watch-namespaces` (one controller per namespace, sharing the limit). Ten watched
//! namespaces used to run ten times `--concurrency` reconciles at once, each with its own API
//! connection and Atlas call in flight.
use testkit::require_cluster;

use std::time::{Duration, Instant};

use atlas_sim::{FaultKind, FaultSpec, FaultTarget};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use linktoken_operator::api::LinkToken;
use testkit::e2e::{Env, ORG, PRIVATE_KEY, PUBLIC_KEY};

/// Two more orgs the demo API key owns (see `SimConfig::demo`).
const ORG_B: &str = "5f1e9b2a3c4d5e6f7a8b9c0e";
const ORG_C: &str = "5f1e9b2a3c4d5e6f7a8b9c0f";

/// Latency of each link-token POST.
const POST_LATENCY: Duration = Duration::from_millis(1500);

async fn creds_and_linktoken(env: &Env, ns: &str, org: &str) {
    let creds = Secret {
        metadata: ObjectMeta {
            name: Some("creds".into()),
            ..Default::default()
        },
        data: Some(
            [("publicApiKey", PUBLIC_KEY), ("privateApiKey", PRIVATE_KEY)]
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    };
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), ns);
    if secrets.get_opt("creds").await.expect("get").is_none() {
        secrets
            .create(&PostParams::default(), &creds)
            .await
            .expect("creds");
    }
    let lt: LinkToken = serde_json::from_value(serde_json::json!({
        "apiVersion": "atlasmigration.io/v1alpha1", "kind": "LinkToken",
        "metadata": {"name": "migration"},
        "spec": {"orgId": org, "accessListIps": ["203.0.113.0/24"],
            "credentialsSecretRef": {"name": "creds"}}
    }))
    .expect("linktoken");
    Api::<LinkToken>::namespaced(env.client.clone(), ns)
        .create(&PostParams::default(), &lt)
        .await
        .expect("create linktoken");
}

/// Three watched namespaces, one LinkToken each, `--concurrency=1`, and every link-token POST
/// takes 1.5 s: the three issues run one after the other (at least 4.5 s), not one per
/// namespace at the same time (about 1.5 s).
#[tokio::test]
async fn concurrency_is_one_limit_across_watched_namespaces() {
    let c = require_cluster!();
    let mut env = Env::new(c, "conc-a").await;
    let own = env.ns.clone();
    let b = c.namespace("conc-b").await;
    let d = c.namespace("conc-c").await;
    env.sim
        .state
        .add_fault(FaultSpec {
            kind: FaultKind::Latency,
            status: None,
            body: None,
            headers: Default::default(),
            latency_ms: POST_LATENCY.as_millis() as u64,
            count: None,
            method: Some("POST".into()),
            org_id: None,
            target: FaultTarget::LinkTokens,
        })
        .expect("fault");
    env.ns = format!("{own},{b},{d}");
    let op = env.spawn_operator(&["--concurrency=1"]);
    env.ns = own.clone();
    env.operator = Some(op);

    let started = Instant::now();
    for (ns, org) in [(&own, ORG), (&b, ORG_B), (&d, ORG_C)] {
        creds_and_linktoken(&env, ns, org).await;
    }
    for ns in [&own, &b, &d] {
        let api: Api<LinkToken> = Api::namespaced(env.client.clone(), ns);
        testkit::eventually(
            Duration::from_secs(60),
            "Ready in every namespace",
            || async {
                let lt = api.get_opt("migration").await.ok()??;
                testkit::operator::is_ready(&lt).then_some(())
            },
        )
        .await;
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= POST_LATENCY * 3,
        "three issues with --concurrency=1 took {elapsed:?}: they ran at the same time"
    );
    for org in [ORG, ORG_B, ORG_C] {
        assert_eq!(env.sim.state.live_links(org), 1, "one link in {org}");
    }
}

//! The pure schedule generator: a seed and a round number give the same list of chaos steps on
//! every machine (its own SplitMix64, so no dependency's algorithm change can alter a schedule).
//!
//! A run is a sequence of rounds: each round applies its steps (an action, then a pause), then
//! the driver heals every fault and checks the system at quiescence. Round `i` depends only on
//! `(seed, i)`, so a violation found in round 7 is replayed by the same seed without the
//! rounds before it mattering to the schedule (they still shape the cluster state).

use std::fmt;

/// Namespaces LinkTokens live in (each may be deleted and replaced by a new generation).
pub const NAMESPACES: usize = 2;
/// Orgs the LinkTokens compete for (fewer orgs than LinkTokens: conflicts are the point).
pub const ORGS: usize = 3;
/// Operator replicas, with leader election.
pub const REPLICAS: usize = 2;
/// Token Secret name variants per LinkToken: 0 = its own name, 1 = `<name>-alt`.
pub const SECRET_VARIANTS: usize = 2;
/// Access lists to choose from (see `driver::access_list`).
pub const ACCESS_LISTS: usize = 3;
/// Valid API keys the credentials Secrets rotate between.
pub const KEYS: usize = 2;
/// Source (Cloud Manager / Ops Manager) orgs the LinkTokens with a `spec.source` compete for.
pub const SOURCE_ORGS: usize = 2;
/// The Lease duration the driver gives the operators; a freeze "past the lease" outlasts it.
pub const LEASE_MS: u64 = 6_000;

/// Retry-After values a 429 may carry: absent, zero, fractional, negative, huge, a date, junk.
pub const RETRY_AFTERS: [Option<&str>; 8] = [
    None,
    Some("0"),
    Some("1"),
    Some("2.5"),
    Some("-3"),
    Some("999999999"),
    Some("Wed, 21 Oct 2015 07:28:00 GMT"),
    Some("soon"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 500/502/503 with an ApiError body.
    ServerError { status: u16 },
    /// 429 with `RETRY_AFTERS[retry_after]`.
    RateLimited { retry_after: usize },
    /// No answer before the operator's request timeout (the call has no effect in Atlas).
    Timeout,
    /// The connection is closed without an answer.
    Drop,
    /// A POST that takes a while, then succeeds.
    SlowPost { latency_ms: u64 },
    /// DELETE answered 409 (a live migration uses the link).
    DeleteConflict,
}

/// A fault at the source (atlas-sim's source port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceFault {
    /// 500/502/503 on one method (POST, GET or DELETE), or on every call with None.
    ServerError {
        status: u16,
        method: Option<&'static str>,
    },
    /// The connection is closed without an answer.
    Drop,
    /// Every call waits, then is handled; past the request timeout when long.
    Latency { latency_ms: u64 },
    /// Status GETs answered `200 {"status":"SYNCED"}` whatever the org holds: a source whose
    /// view lags a revocation.
    LaggingSynced,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Server-side apply of the whole LinkToken (on an existing one: an edit of everything).
    CreateLinkToken {
        ns: usize,
        lt: usize,
        org: usize,
        ips: usize,
        secret: usize,
        retain: bool,
    },
    DeleteLinkToken {
        ns: usize,
        lt: usize,
    },
    EditOrg {
        ns: usize,
        lt: usize,
        org: usize,
    },
    EditAccessList {
        ns: usize,
        lt: usize,
        ips: usize,
    },
    Rotate {
        ns: usize,
        lt: usize,
        value: u32,
    },
    RenameTokenSecret {
        ns: usize,
        lt: usize,
        secret: usize,
    },
    DeleteCredentials {
        ns: usize,
    },
    /// Delete and create the credentials Secret again (a new object), with key `key`.
    RecreateCredentials {
        ns: usize,
        key: usize,
    },
    /// Update the credentials Secret in place to key `key`.
    RotateCredentials {
        ns: usize,
        key: usize,
    },
    /// Delete the Secret the LinkToken's token is in (if the operator made it).
    DeleteTokenSecret {
        ns: usize,
        lt: usize,
    },
    /// Overwrite the token in the operator's Secret.
    TamperTokenSecret {
        ns: usize,
        lt: usize,
    },
    /// A user Secret with the name variant `secret` of the LinkToken (unless one exists).
    SquatSecret {
        ns: usize,
        lt: usize,
        secret: usize,
    },
    /// The user deletes their Secret of that name again (if it is theirs).
    UnsquatSecret {
        ns: usize,
        lt: usize,
        secret: usize,
    },
    /// Delete the namespace; the driver creates the next generation with credentials.
    DeleteNamespace {
        ns: usize,
    },
    KillOperator {
        replica: usize,
        down_ms: u64,
    },
    /// SIGSTOP, SIGCONT after `ms`.
    FreezeOperator {
        replica: usize,
        ms: u64,
    },
    /// SIGTERM, then start it again.
    RestartOperator {
        replica: usize,
    },
    RestartApiServer {
        down_ms: u64,
    },
    RestartEtcd {
        down_ms: u64,
    },
    AtlasFault {
        fault: Fault,
        count: u64,
        org: Option<usize>,
    },
    /// `spec.source` on the sim's source port, source org `org` (on a LinkToken linked
    /// elsewhere: a move).
    SetSource {
        ns: usize,
        lt: usize,
        org: usize,
    },
    /// `spec.source.url` set to a URL the operator is not allowed to call (the driver's
    /// recording listener).
    DisallowedSource {
        ns: usize,
        lt: usize,
    },
    RemoveSource {
        ns: usize,
        lt: usize,
    },
    /// Rotate the `pick`-th (modulo) LinkToken that reports Linked=True, if any.
    RotateLinked {
        pick: usize,
        value: u32,
    },
    SourceFault {
        fault: SourceFault,
        count: u64,
        /// A source org, or every call at the source.
        org: Option<usize>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub action: Action,
    /// Pause after the action, before the next step.
    pub pause_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Round {
    pub index: u32,
    pub steps: Vec<Step>,
}

/// How dense a schedule is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// LinkToken slots per namespace.
    pub workers: usize,
    pub min_steps: u32,
    pub max_steps: u32,
    pub max_pause_ms: u64,
    /// Control-plane restarts are slow (seconds each); off for the quickest schedules.
    pub control_plane_restarts: bool,
    /// Source steps per round (drawn apart from the others, see [`round`]).
    pub min_source_steps: u32,
    pub max_source_steps: u32,
}

impl Shape {
    /// The `chaos` flags that select this shape, for a report's reproduce line: a replay with
    /// another shape draws other rounds from the same seed.
    pub fn replay_flags(&self) -> String {
        let mut flags = format!("--workers {}", self.workers);
        let short = Shape::short(self.workers);
        if (self.min_steps, self.max_steps, self.max_pause_ms)
            == (short.min_steps, short.max_steps, short.max_pause_ms)
        {
            flags.push_str(" --short");
        } else if !self.control_plane_restarts {
            flags.push_str(" --no-control-plane-restarts");
        }
        flags
    }

    pub fn long(workers: usize) -> Shape {
        Shape {
            workers: workers.max(1),
            min_steps: 8,
            max_steps: 24,
            max_pause_ms: 2_500,
            control_plane_restarts: true,
            min_source_steps: 2,
            max_source_steps: 6,
        }
    }

    /// For CI: short rounds, no control-plane restarts (each costs ~15 s on a busy machine;
    /// tests/reliability.rs covers them on their own).
    pub fn short(workers: usize) -> Shape {
        Shape {
            workers: workers.max(1),
            min_steps: 6,
            max_steps: 12,
            max_pause_ms: 1_500,
            control_plane_restarts: false,
            min_source_steps: 2,
            max_source_steps: 4,
        }
    }
}

/// SplitMix64: tiny, well mixed, and fixed here forever.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; 0 gives 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    pub fn index(&mut self, n: usize) -> usize {
        usize::try_from(self.below(n as u64)).unwrap_or(0)
    }

    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Round `index` of the schedule of `seed`.
///
/// The source steps come from a generator of their own and are inserted among the others, so
/// the other steps of a seed recorded before source steps existed are drawn unchanged (in
/// the same order, with other steps between them).
pub fn round(seed: u64, index: u32, shape: &Shape) -> Round {
    let mut rng = Rng::new(seed ^ u64::from(index).wrapping_mul(0xD6E8_FEB8_6659_FD93));
    // Burn one so that seed 0 / round 0 does not start from a zero state.
    rng.next_u64();
    let n = rng.range(u64::from(shape.min_steps), u64::from(shape.max_steps));
    let mut steps: Vec<Step> = (0..n)
        .map(|_| Step {
            action: action(&mut rng, shape),
            pause_ms: rng.range(100, shape.max_pause_ms),
        })
        .collect();
    let mut src = Rng::new(
        seed ^ u64::from(index).wrapping_mul(0xA076_1D64_78BD_642F) ^ 0xE703_7ED1_A0B4_28DB,
    );
    src.next_u64();
    let m = src.range(
        u64::from(shape.min_source_steps),
        u64::from(shape.max_source_steps.max(shape.min_source_steps)),
    );
    for _ in 0..m {
        let step = Step {
            action: source_action(&mut src, shape),
            pause_ms: src.range(100, shape.max_pause_ms),
        };
        let at = src.index(steps.len() + 1);
        steps.insert(at, step);
    }
    Round { index, steps }
}

/// One source step: mostly giving LinkTokens a source (so two share a source org often) and
/// faults at the source.
fn source_action(rng: &mut Rng, shape: &Shape) -> Action {
    let ns = rng.index(NAMESPACES);
    let lt = rng.index(shape.workers);
    let org = rng.index(SOURCE_ORGS);
    let value = u32::try_from(rng.below(1_000_000)).unwrap_or(0);
    let count = rng.range(1, 6);
    let which = rng.chance(60).then(|| rng.index(SOURCE_ORGS));
    match rng.below(100) {
        0..=37 => Action::SetSource { ns, lt, org },
        38..=44 => Action::DisallowedSource { ns, lt },
        45..=52 => Action::RemoveSource { ns, lt },
        53..=62 => Action::RotateLinked {
            pick: rng.index(NAMESPACES * shape.workers),
            value,
        },
        _ => {
            let fault = match rng.below(5) {
                0 | 1 => SourceFault::ServerError {
                    status: [500, 502, 503][rng.index(3)],
                    method: [None, Some("POST"), Some("GET"), Some("DELETE")][rng.index(4)],
                },
                2 => SourceFault::Drop,
                3 => SourceFault::Latency {
                    latency_ms: rng.range(300, 5_000),
                },
                _ => SourceFault::LaggingSynced,
            };
            Action::SourceFault {
                fault,
                count,
                org: which,
            }
        }
    }
}

/// Weighted choice of one action: resource churn most often, process and control-plane
/// trouble rarely (each costs seconds to tens of seconds).
fn action(rng: &mut Rng, shape: &Shape) -> Action {
    // Every parameter is drawn whatever the action, so each action costs the same draws.
    let ns = rng.index(NAMESPACES);
    let lt = rng.index(shape.workers);
    let org = rng.index(ORGS);
    let ips = rng.index(ACCESS_LISTS);
    let secret = rng.index(SECRET_VARIANTS);
    let key = rng.index(KEYS);
    let table: [(u64, u8); 20] = [
        (22, 0),  // create / re-apply
        (5, 1),   // delete
        (6, 2),   // orgId edit
        (4, 3),   // access list edit
        (5, 4),   // rotate
        (4, 5),   // rename token Secret
        (2, 6),   // delete credentials
        (3, 7),   // recreate credentials
        (3, 8),   // rotate credentials
        (3, 9),   // delete token Secret
        (3, 10),  // tamper token Secret
        (3, 11),  // squat
        (3, 12),  // unsquat
        (1, 13),  // namespace deletion
        (2, 14),  // SIGKILL
        (2, 15),  // SIGSTOP past the lease
        (2, 16),  // restart
        (1, 17),  // kube-apiserver restart
        (1, 18),  // etcd restart
        (14, 19), // an Atlas fault
    ];
    let total: u64 = table.iter().map(|(w, _)| w).sum();
    let mut pick = rng.below(total);
    let mut kind = 0;
    for (w, k) in table {
        if pick < w {
            kind = k;
            break;
        }
        pick -= w;
    }
    if !shape.control_plane_restarts && matches!(kind, 17 | 18) {
        kind = 19;
    }
    match kind {
        0 => Action::CreateLinkToken {
            ns,
            lt,
            org,
            ips,
            secret,
            retain: rng.chance(15),
        },
        1 => Action::DeleteLinkToken { ns, lt },
        2 => Action::EditOrg { ns, lt, org },
        3 => Action::EditAccessList { ns, lt, ips },
        4 => Action::Rotate {
            ns,
            lt,
            value: u32::try_from(rng.below(1_000_000)).unwrap_or(0),
        },
        5 => Action::RenameTokenSecret { ns, lt, secret },
        6 => Action::DeleteCredentials { ns },
        7 => Action::RecreateCredentials { ns, key },
        8 => Action::RotateCredentials { ns, key },
        9 => Action::DeleteTokenSecret { ns, lt },
        10 => Action::TamperTokenSecret { ns, lt },
        11 => Action::SquatSecret { ns, lt, secret },
        12 => Action::UnsquatSecret { ns, lt, secret },
        13 => Action::DeleteNamespace { ns },
        14 => Action::KillOperator {
            replica: rng.index(REPLICAS),
            down_ms: rng.range(0, 4_000),
        },
        15 => Action::FreezeOperator {
            replica: rng.index(REPLICAS),
            ms: rng.range(LEASE_MS + 1_000, LEASE_MS + 8_000),
        },
        16 => Action::RestartOperator {
            replica: rng.index(REPLICAS),
        },
        17 => Action::RestartApiServer {
            down_ms: rng.range(200, 3_000),
        },
        18 => Action::RestartEtcd {
            down_ms: rng.range(200, 3_000),
        },
        _ => {
            let fault = match rng.below(6) {
                0 => Fault::ServerError {
                    status: [500, 502, 503][rng.index(3)],
                },
                1 => Fault::RateLimited {
                    retry_after: rng.index(RETRY_AFTERS.len()),
                },
                2 => Fault::Timeout,
                3 => Fault::Drop,
                4 => Fault::SlowPost {
                    latency_ms: rng.range(300, 2_500),
                },
                _ => Fault::DeleteConflict,
            };
            Action::AtlasFault {
                fault,
                count: rng.range(1, 6),
                org: rng.chance(50).then(|| rng.index(ORGS)),
            }
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}, then {} ms", self.action, self.pause_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(a: &Action) -> u8 {
        match a {
            Action::CreateLinkToken { .. } => 0,
            Action::DeleteLinkToken { .. } => 1,
            Action::EditOrg { .. } => 2,
            Action::EditAccessList { .. } => 3,
            Action::Rotate { .. } => 4,
            Action::RenameTokenSecret { .. } => 5,
            Action::DeleteCredentials { .. } => 6,
            Action::RecreateCredentials { .. } => 7,
            Action::RotateCredentials { .. } => 8,
            Action::DeleteTokenSecret { .. } => 9,
            Action::TamperTokenSecret { .. } => 10,
            Action::SquatSecret { .. } => 11,
            Action::UnsquatSecret { .. } => 12,
            Action::DeleteNamespace { .. } => 13,
            Action::KillOperator { .. } => 14,
            Action::FreezeOperator { .. } => 15,
            Action::RestartOperator { .. } => 16,
            Action::RestartApiServer { .. } => 17,
            Action::RestartEtcd { .. } => 18,
            Action::AtlasFault { .. } => 19,
            Action::SetSource { .. } => 20,
            Action::DisallowedSource { .. } => 21,
            Action::RemoveSource { .. } => 22,
            Action::RotateLinked { .. } => 23,
            Action::SourceFault { .. } => 24,
        }
    }

    #[test]
    fn a_reports_replay_flags_select_the_same_shape() {
        assert_eq!(Shape::short(3).replay_flags(), "--workers 3 --short");
        assert_eq!(Shape::long(4).replay_flags(), "--workers 4");
        let mut quiet = Shape::long(3);
        quiet.control_plane_restarts = false;
        assert_eq!(
            quiet.replay_flags(),
            "--workers 3 --no-control-plane-restarts"
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let shape = Shape::long(3);
        for seed in [0, 1, 42, u64::MAX] {
            for i in 0..20 {
                assert_eq!(round(seed, i, &shape), round(seed, i, &shape));
            }
        }
    }

    #[test]
    fn a_schedule_is_pinned_forever() {
        // A recorded seed must replay the same schedule after any dependency upgrade.
        let r = round(7, 0, &Shape::long(3));
        let mut rng = Rng::new(1);
        assert_eq!(rng.next_u64(), 0x910A_2DEC_8902_5CC1);
        assert_eq!(r, round(7, 0, &Shape::long(3)));
        assert!(!r.steps.is_empty());
    }

    #[test]
    fn different_seeds_and_rounds_differ() {
        let shape = Shape::long(3);
        assert_ne!(round(1, 0, &shape), round(2, 0, &shape));
        assert_ne!(round(1, 0, &shape).steps, round(1, 1, &shape).steps);
    }

    #[test]
    fn every_action_and_fault_appears_and_stays_in_range() {
        let shape = Shape::long(3);
        let mut kinds = std::collections::BTreeSet::new();
        let mut faults = std::collections::BTreeSet::new();
        for i in 0..300 {
            for s in round(99, i, &shape).steps {
                kinds.insert(kind(&s.action));
                assert!((100..=shape.max_pause_ms).contains(&s.pause_ms));
                match s.action {
                    Action::FreezeOperator { replica, ms } => {
                        assert!(replica < REPLICAS);
                        assert!(ms > LEASE_MS, "a freeze outlasts the Lease");
                    }
                    Action::CreateLinkToken { ns, lt, org, .. } => {
                        assert!(ns < NAMESPACES && lt < shape.workers && org < ORGS);
                    }
                    Action::SetSource { ns, lt, org } => {
                        assert!(ns < NAMESPACES && lt < shape.workers && org < SOURCE_ORGS);
                    }
                    Action::SourceFault { fault, count, org } => {
                        assert!((1..=6).contains(&count));
                        assert!(org.is_none_or(|o| o < SOURCE_ORGS));
                        faults.insert(
                            format!("source {fault:?}")
                                .split([' ', '{'])
                                .nth(1)
                                .map(|k| format!("source {k}")),
                        );
                    }
                    Action::AtlasFault { fault, count, org } => {
                        assert!((1..=6).contains(&count));
                        assert!(org.is_none_or(|o| o < ORGS));
                        faults.insert(
                            format!("{fault:?}")
                                .split([' ', '{'])
                                .next()
                                .map(str::to_owned),
                        );
                    }
                    _ => {}
                }
            }
        }
        assert_eq!(kinds.len(), 25, "kinds seen: {kinds:?}");
        assert_eq!(faults.len(), 10, "faults seen: {faults:?}");
    }

    #[test]
    fn source_steps_leave_the_other_steps_of_a_seed_as_they_were() {
        let with = Shape::short(3);
        let without = Shape {
            min_source_steps: 0,
            max_source_steps: 0,
            ..with
        };
        for i in 0..50 {
            let all = round(11, i, &with).steps;
            let others: Vec<Step> = all
                .iter()
                .filter(|s| !is_source(&s.action))
                .copied()
                .collect();
            assert_eq!(others, round(11, i, &without).steps);
            let n = all.len() - others.len();
            assert!((2..=4).contains(&n), "{n} source steps in a short round");
        }
    }

    #[test]
    fn the_short_shape_exercises_every_source_step() {
        let shape = Shape::short(3);
        let mut kinds = std::collections::BTreeSet::new();
        let mut lagging = false;
        for i in 0..40 {
            for s in round(20261130, i, &shape).steps {
                if is_source(&s.action) {
                    kinds.insert(kind(&s.action));
                }
                lagging |= matches!(
                    s.action,
                    Action::SourceFault {
                        fault: SourceFault::LaggingSynced,
                        ..
                    }
                );
            }
        }
        assert_eq!(kinds.len(), 5, "{kinds:?}");
        assert!(lagging);
    }

    fn is_source(a: &Action) -> bool {
        (20..=24).contains(&kind(a))
    }

    #[test]
    fn without_control_plane_restarts_none_is_scheduled() {
        let shape = Shape {
            control_plane_restarts: false,
            ..Shape::long(2)
        };
        for i in 0..200 {
            for s in round(5, i, &shape).steps {
                assert!(!matches!(
                    s.action,
                    Action::RestartApiServer { .. } | Action::RestartEtcd { .. }
                ));
            }
        }
    }
}

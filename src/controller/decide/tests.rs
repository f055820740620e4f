//! Table tests: each row is one line of the issuing and conditions tables (docs/lifecycle.md,
//! docs/conditions.md).

use super::*;

const ORG: &str = "5f1e9b2a3c4d5e6f7a8b9c0d";
const ORG2: &str = "aaaaaaaaaaaaaaaaaaaaaaaa";
const SHA: &str = "1111";
const ATTEMPT: &str = "attempt-1";

/// The marker of attempt `ATTEMPT`, issued for the spec of [`ready`].
fn marker(org: &str) -> InFlight {
    InFlight {
        org_id: org.into(),
        attempt_id: Some(ATTEMPT.into()),
        access_list_sha256: Some(access_list_sha256(&["10.0.0.0/24".to_string()])),
        rotate: None,
    }
}

fn owned(key: &str, sha: &str) -> SecretState {
    SecretState::Ours(OwnedSecret {
        value_hashes: vec![(key.into(), sha.into())],
        attempt_id: Some(ATTEMPT.into()),
        metadata_current: true,
    })
}

/// A LinkToken whose token is issued and current.
fn ready() -> Observed {
    Observed {
        generation: Some(1),
        org_id: ORG.into(),
        access_list: vec!["10.0.0.0/24".into()],
        rotate: None,
        credentials: CredentialsState::Valid,
        credentials_version: Some("7".into()),
        org: OrgOwnership::Owner,
        target_secret_name: "lt".into(),
        target_secret_key: "linkToken".into(),
        target_secret: owned("linkToken", SHA),
        previous_secret: None,
        issued_for: Some(IssuedFor {
            org_id: ORG.into(),
            access_list: vec!["10.0.0.0/24".into()],
            rotate: None,
            token_sha256: Some(SHA.into()),
        }),
        in_flight: None,
        held_by_others: vec![],
        others_may_hold: false,
        reported_unusable: false,
        reported_issuing: false,
        reported_conflict: false,
        last_stalled: None,
        retry_hold: None,
        token_store: TokenStore::Secret,
        takeover_wait: None,
    }
}

fn fresh() -> Observed {
    Observed {
        target_secret: SecretState::Absent,
        issued_for: None,
        ..ready()
    }
}

fn reason(a: &Step) -> Option<Reason> {
    match a {
        Step::Wait { reason, .. } => Some(*reason),
        _ => None,
    }
}

fn issue(why: IssueWhy, revoke: &[&str]) -> Step {
    Step::Issue {
        why,
        revoke_orgs: revoke.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn the_issuing_table() {
    let cases: Vec<(&str, Observed, Step)> = vec![
        (
            "nothing issued yet: POST without a DELETE",
            fresh(),
            issue(IssueWhy::NoToken, &[]),
        ),
        (
            "interrupted before anything was stored: DELETE first",
            Observed {
                in_flight: Some(marker(ORG)),
                ..fresh()
            },
            issue(IssueWhy::Interrupted, &[ORG]),
        ),
        (
            "Secret deleted: revoke and reissue",
            Observed {
                target_secret: SecretState::Absent,
                ..ready()
            },
            issue(IssueWhy::SecretDeleted, &[ORG]),
        ),
        (
            "Secret tampered: revoke and reissue",
            Observed {
                target_secret: owned("linkToken", "2222"),
                ..ready()
            },
            issue(IssueWhy::SecretTampered, &[ORG]),
        ),
        (
            "token value removed from the Secret: tampered",
            Observed {
                target_secret: SecretState::Ours(OwnedSecret {
                    metadata_current: true,
                    ..Default::default()
                }),
                ..ready()
            },
            issue(IssueWhy::SecretTampered, &[ORG]),
        ),
        (
            "access list changed",
            Observed {
                access_list: vec!["10.0.0.0/24".into(), "192.0.2.1".into()],
                ..ready()
            },
            issue(IssueWhy::AccessListChanged, &[ORG]),
        ),
        (
            "rotate annotation set",
            Observed {
                rotate: Some("1".into()),
                ..ready()
            },
            issue(IssueWhy::RotateRequested, &[ORG]),
        ),
        (
            "orgId changed: the old org's link is revoked first, on its own",
            Observed {
                org_id: ORG2.into(),
                ..ready()
            },
            revoke_previous(&[ORG], &[]),
        ),
        (
            "orgId changed and the old org revoked: the new org gets a POST without a DELETE",
            Observed {
                org_id: ORG2.into(),
                issued_for: None,
                ..ready()
            },
            issue(IssueWhy::NoToken, &[]),
        ),
    ];
    for (what, observed, want) in cases {
        assert_eq!(decide(&observed), want, "{what}");
    }
}

#[test]
fn access_list_order_and_duplicates_do_not_reissue() {
    let mut o = ready();
    o.issued_for.as_mut().unwrap().access_list = vec!["b".into(), "a".into()];
    o.access_list = vec!["a".into(), "b".into(), "a".into()];
    assert!(matches!(decide(&o), Step::Keep { .. }));
}

#[test]
fn ready_and_current_does_nothing_but_report() {
    assert_eq!(
        decide(&ready()),
        Step::Keep {
            source: SecretSource::Target {
                key: "linkToken".into()
            },
            rewrite_secret: false,
            delete_previous: false,
        }
    );
}

#[test]
fn metadata_changes_rewrite_the_secret_without_reissuing() {
    let mut o = ready();
    o.target_secret = SecretState::Ours(OwnedSecret {
        value_hashes: vec![("linkToken".into(), SHA.into())],
        attempt_id: None,
        metadata_current: false,
    });
    assert_eq!(
        decide(&o),
        Step::Keep {
            source: SecretSource::Target {
                key: "linkToken".into()
            },
            rewrite_secret: true,
            delete_previous: false,
        }
    );
}

#[test]
fn a_key_change_moves_the_token_within_the_secret() {
    let o = Observed {
        target_secret_key: "token".into(),
        ..ready()
    };
    assert_eq!(
        decide(&o),
        Step::Keep {
            source: SecretSource::Target {
                key: "linkToken".into()
            },
            rewrite_secret: true,
            delete_previous: false,
        }
    );
}

#[test]
fn a_name_change_moves_the_token_and_deletes_the_old_secret() {
    let o = Observed {
        target_secret_name: "new".into(),
        target_secret: SecretState::Absent,
        previous_secret: Some(("lt".into(), owned("linkToken", SHA))),
        ..ready()
    };
    assert_eq!(
        decide(&o),
        Step::Keep {
            source: SecretSource::Previous {
                name: "lt".into(),
                key: "linkToken".into()
            },
            rewrite_secret: true,
            delete_previous: true,
        }
    );
}

#[test]
fn a_name_change_onto_a_foreign_secret_is_a_conflict_and_keeps_the_old_one() {
    let o = Observed {
        target_secret_name: "taken".into(),
        target_secret: SecretState::Foreign,
        previous_secret: Some(("lt".into(), owned("linkToken", SHA))),
        ..ready()
    };
    assert_eq!(reason(&decide(&o)), Some(Reason::SecretConflict));
}

#[test]
fn the_waiting_table_makes_no_atlas_call() {
    let cases: Vec<(&str, Observed, Reason)> = vec![
        (
            "credentials absent",
            Observed {
                credentials: CredentialsState::Missing,
                ..fresh()
            },
            Reason::CredentialsNotFound,
        ),
        (
            "credentials invalid",
            Observed {
                credentials: CredentialsState::Invalid("missing privateApiKey".into()),
                ..fresh()
            },
            Reason::CredentialsInvalid,
        ),
        (
            "older LinkToken owns the org",
            Observed {
                org: OrgOwnership::ConflictWith {
                    same_namespace_name: Some("first".into()),
                },
                ..fresh()
            },
            Reason::OrgConflict,
        ),
        (
            "foreign Secret at the target name",
            Observed {
                target_secret: SecretState::Foreign,
                ..fresh()
            },
            Reason::SecretConflict,
        ),
        (
            "credentials are checked before anything else",
            Observed {
                credentials: CredentialsState::Missing,
                target_secret: SecretState::Foreign,
                org: OrgOwnership::ConflictWith {
                    same_namespace_name: None,
                },
                ..fresh()
            },
            Reason::CredentialsNotFound,
        ),
    ];
    for (what, observed, want) in cases {
        assert_eq!(reason(&decide(&observed)), Some(want), "{what}");
    }
}

#[test]
fn org_conflict_names_the_owner_only_in_the_same_namespace() {
    let other_ns = Observed {
        org: OrgOwnership::ConflictWith {
            same_namespace_name: None,
        },
        ..fresh()
    };
    let Step::Wait { message, .. } = decide(&other_ns) else {
        panic!("wait")
    };
    // Not even that it is in another namespace: where an org is managed is the log's.
    assert!(message.contains("another LinkToken"), "{message}");
    assert!(!message.contains("namespace"), "{message}");
    let same_ns = Observed {
        org: OrgOwnership::ConflictWith {
            same_namespace_name: Some("first".into()),
        },
        ..fresh()
    };
    let Step::Wait { message, .. } = decide(&same_ns) else {
        panic!("wait")
    };
    assert!(message.contains("LinkToken first"), "{message}");
}

#[test]
fn a_user_fixable_failure_is_not_retried_with_the_same_inputs() {
    let stalled = StalledAttempt {
        reason: Reason::AtlasForbidden,
        generation: Some(1),
        credentials_version: Some("7".into()),
        rotate: None,
        resync_due: false,
    };
    let o = Observed {
        last_stalled: Some(stalled.clone()),
        ..fresh()
    };
    assert_eq!(reason(&decide(&o)), Some(Reason::AtlasForbidden));

    let cases: Vec<(&str, Observed)> = vec![
        (
            "spec changed",
            Observed {
                generation: Some(2),
                ..o.clone()
            },
        ),
        (
            "credentials changed",
            Observed {
                credentials_version: Some("8".into()),
                ..o.clone()
            },
        ),
        (
            "rotate requested",
            Observed {
                rotate: Some("x".into()),
                ..o.clone()
            },
        ),
        (
            "slow resync due",
            Observed {
                last_stalled: Some(StalledAttempt {
                    resync_due: true,
                    ..stalled.clone()
                }),
                ..o.clone()
            },
        ),
    ];
    for (what, observed) in cases {
        assert!(matches!(decide(&observed), Step::Issue { .. }), "{what}");
    }
}

#[test]
fn crash_after_the_secret_before_status_adopts_the_stored_token() {
    let o = Observed {
        issued_for: None,
        in_flight: Some(marker(ORG)),
        target_secret: owned("linkToken", "3333"),
        ..ready()
    };
    assert_eq!(
        decide(&o),
        Step::Adopt {
            token_key: "linkToken".into()
        }
    );
}

#[test]
fn a_secret_older_than_the_marker_holds_a_revoked_token_and_is_not_adopted() {
    // Crash after the DELETE of a rotation, before the POST: the Secret still holds the old,
    // now revoked, token (written by an earlier attempt). It must be replaced, never reported
    // Ready.
    let o = Observed {
        in_flight: Some(InFlight {
            attempt_id: Some("attempt-2".into()),
            ..marker(ORG)
        }),
        ..ready()
    };
    assert_eq!(decide(&o), issue(IssueWhy::Interrupted, &[ORG]));
}

#[test]
fn an_interrupted_issue_in_another_org_revokes_both_orgs() {
    let o = Observed {
        org_id: ORG2.into(),
        in_flight: Some(marker(ORG2)),
        target_secret: SecretState::Absent,
        ..ready()
    };
    assert_eq!(
        decide(&o),
        revoke_previous(&[ORG], &[]),
        "the previous org first; the marker's org is revoked by the next issue"
    );
    let after = Observed {
        issued_for: None,
        ..o
    };
    assert_eq!(decide(&after), issue(IssueWhy::Interrupted, &[ORG2]));
}

fn revoke_previous(revoke: &[&str], skip: &[&str]) -> Step {
    Step::RevokePrevious {
        revoke: revoke.iter().map(|s| s.to_string()).collect(),
        skip: skip.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn an_org_conflict_wait_never_keeps_the_old_link_live() {
    // orgId moved into an org another LinkToken owns: revoke the old org before waiting.
    let o = Observed {
        org_id: ORG2.into(),
        org: OrgOwnership::ConflictWith {
            same_namespace_name: None,
        },
        ..ready()
    };
    assert_eq!(decide(&o), revoke_previous(&[ORG], &[]));
    let revoked = Observed {
        issued_for: None,
        ..o
    };
    assert_eq!(reason(&decide(&revoked)), Some(Reason::OrgConflict));
}

#[test]
fn a_previous_org_where_another_linktoken_holds_the_live_link_is_not_deleted() {
    let o = Observed {
        org_id: ORG2.into(),
        held_by_others: vec![ORG.into()],
        ..ready()
    };
    assert_eq!(decide(&o), revoke_previous(&[], &[ORG]));
}

#[test]
fn the_revocation_of_a_previous_org_waits_for_its_retry_delay() {
    let o = Observed {
        org_id: ORG2.into(),
        retry_hold: Some(RetryHold {
            reason: Reason::AtlasUnavailable,
            generation: Some(1),
            credentials_version: Some("7".into()),
            rotate: None,
            remaining: std::time::Duration::from_secs(3),
        }),
        ..ready()
    };
    assert!(matches!(decide(&o), Step::Hold { .. }));
}

#[test]
fn a_revocation_of_a_previous_org_atlas_rejected_is_not_repeated_with_the_same_inputs() {
    let stalled = StalledAttempt {
        reason: Reason::AtlasRejected,
        generation: Some(1),
        credentials_version: Some("7".into()),
        rotate: None,
        resync_due: false,
    };
    let o = Observed {
        org_id: ORG2.into(),
        last_stalled: Some(stalled.clone()),
        ..ready()
    };
    assert_eq!(reason(&decide(&o)), Some(Reason::AtlasRejected));
    let edited = Observed {
        generation: Some(2),
        ..o
    };
    assert_eq!(decide(&edited), revoke_previous(&[ORG], &[]));
}

#[test]
fn credentials_usable_again_announce_the_claim_before_issuing() {
    let o = Observed {
        reported_unusable: true,
        ..fresh()
    };
    assert_eq!(reason(&decide(&o)), Some(Reason::Issuing));
    let announced = Observed {
        reported_unusable: false,
        ..o
    };
    assert_eq!(decide(&announced), issue(IssueWhy::NoToken, &[]));
}

#[test]
fn an_issue_revokes_a_token_another_linktoken_left_live_in_the_org() {
    // Chaos seed 4: the holder's credentials were deleted, its claim lapsed, this one took over.
    let o = Observed {
        others_may_hold: true,
        ..fresh()
    };
    assert_eq!(decide(&o), issue(IssueWhy::NoToken, &[ORG]));
    // Its own earlier token in the org is revoked anyway: one DELETE, not two.
    let rotated = Observed {
        others_may_hold: true,
        rotate: Some("r1".into()),
        ..ready()
    };
    assert_eq!(decide(&rotated), issue(IssueWhy::RotateRequested, &[ORG]));
}

#[test]
fn a_token_recorded_before_waiting_in_org_conflict_is_reissued_once_the_org_is_ours_again() {
    // Chaos seed 8456493263140631753: this LinkToken's claim lapsed, another took the org over
    // (revoking every link there) and this one waited in OrgConflict with its old token still
    // recorded; the other moved away. Keeping the record would be Ready with a dead token.
    let regained = Observed {
        reported_conflict: true,
        ..ready()
    };
    assert_eq!(decide(&regained), issue(IssueWhy::OrgRegained, &[ORG]));
    // Still behind another LinkToken: it keeps waiting, no Atlas call.
    let behind = Observed {
        org: OrgOwnership::ConflictWith {
            same_namespace_name: None,
        },
        ..regained
    };
    assert_eq!(reason(&decide(&behind)), Some(Reason::OrgConflict));
}

#[test]
fn a_token_held_through_unusable_credentials_is_reissued_after_the_claim_is_announced() {
    // Chaos seed 1: the org was taken over (and the token revoked) while the credentials of
    // this Ready LinkToken were missing; they are back. Announce the claim first...
    let back = Observed {
        reported_unusable: true,
        ..ready()
    };
    assert_eq!(reason(&decide(&back)), Some(Reason::Issuing));
    // ...then issue, revoking in the org first.
    let announced = Observed {
        reported_issuing: true,
        ..ready()
    };
    assert_eq!(
        decide(&announced),
        issue(IssueWhy::CredentialsRestored, &[ORG])
    );
    // Credentials still missing: nothing, whatever was reported.
    let still_missing = Observed {
        credentials: CredentialsState::Missing,
        ..back
    };
    assert_eq!(
        reason(&decide(&still_missing)),
        Some(Reason::CredentialsNotFound)
    );
}

#[test]
fn an_issue_never_deletes_where_another_linktoken_holds_the_live_link() {
    let o = Observed {
        in_flight: Some(InFlight {
            org_id: ORG.into(),
            attempt_id: Some("a1".into()),
            access_list_sha256: None,
            rotate: None,
        }),
        held_by_others: vec![ORG.into()],
        target_secret: SecretState::Absent,
        issued_for: None,
        ..ready()
    };
    assert_eq!(decide(&o), issue(IssueWhy::Interrupted, &[]));
}

#[test]
fn the_orgs_that_may_hold_a_token() {
    assert!(orgs_that_may_hold_a_token(None, None).is_empty());
    assert_eq!(orgs_that_may_hold_a_token(Some(ORG), None), vec![ORG]);
    assert_eq!(orgs_that_may_hold_a_token(None, Some(ORG)), vec![ORG]);
    assert_eq!(orgs_that_may_hold_a_token(Some(ORG), Some(ORG)), vec![ORG]);
    assert_eq!(
        orgs_that_may_hold_a_token(Some(ORG), Some(ORG2)),
        vec![ORG, ORG2]
    );
}

/// One row per line of the deletion table in docs/lifecycle.md.
#[test]
fn the_deletion_table() {
    let base = CleanupObserved {
        retain: false,
        issued_org: Some(ORG.into()),
        in_flight_org: None,
        held_by_others: vec![],
        credentials: CredentialsState::Valid,
        in_flight_recorded: false,
        takeover_wait: None,
    };
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let cases: Vec<(&str, CleanupObserved, CleanupStep)> = vec![
        (
            "Retain with a token: keep it, let go",
            CleanupObserved {
                retain: true,
                ..base.clone()
            },
            CleanupStep::Retain {
                had_token: true,
                revoke_orphan: None,
            },
        ),
        (
            "Retain, never issued: let go quietly",
            CleanupObserved {
                retain: true,
                issued_org: None,
                ..base.clone()
            },
            CleanupStep::Retain {
                had_token: false,
                revoke_orphan: None,
            },
        ),
        (
            "Retain with an unfinished issue whose token no Secret holds: revoke the orphan, keep the rest",
            CleanupObserved {
                retain: true,
                in_flight_org: Some(ORG2.into()),
                ..base.clone()
            },
            CleanupStep::Retain {
                had_token: true,
                revoke_orphan: Some(ORG2.into()),
            },
        ),
        (
            "Retain with an unfinished issue whose token the Secret holds: keep it",
            CleanupObserved {
                retain: true,
                in_flight_org: Some(ORG2.into()),
                in_flight_recorded: true,
                ..base.clone()
            },
            CleanupStep::Retain {
                had_token: true,
                revoke_orphan: None,
            },
        ),
        (
            "Retain with an unfinished issue in an org another LinkToken holds: never DELETE there",
            CleanupObserved {
                retain: true,
                in_flight_org: Some(ORG2.into()),
                held_by_others: s(&[ORG2]),
                ..base.clone()
            },
            CleanupStep::Retain {
                had_token: true,
                revoke_orphan: None,
            },
        ),
        (
            "never issued (or only waited on an OrgConflict): no Atlas call",
            CleanupObserved {
                issued_org: None,
                ..base.clone()
            },
            CleanupStep::Release { skipped: vec![] },
        ),
        (
            "issued: DELETE in its org",
            base.clone(),
            CleanupStep::Revoke {
                revoke: s(&[ORG]),
                skipped: vec![],
            },
        ),
        (
            "interrupted issue only: DELETE in the marker's org",
            CleanupObserved {
                issued_org: None,
                in_flight_org: Some(ORG2.into()),
                ..base.clone()
            },
            CleanupStep::Revoke {
                revoke: s(&[ORG2]),
                skipped: vec![],
            },
        ),
        (
            "issued in one org, interrupted in another: DELETE in both",
            CleanupObserved {
                in_flight_org: Some(ORG2.into()),
                ..base.clone()
            },
            CleanupStep::Revoke {
                revoke: s(&[ORG, ORG2]),
                skipped: vec![],
            },
        ),
        (
            "another LinkToken holds the live link in the org: never DELETE there",
            CleanupObserved {
                held_by_others: s(&[ORG]),
                ..base.clone()
            },
            CleanupStep::Release { skipped: s(&[ORG]) },
        ),
        (
            "one org held by another, one ours: DELETE only ours",
            CleanupObserved {
                in_flight_org: Some(ORG2.into()),
                held_by_others: s(&[ORG]),
                ..base.clone()
            },
            CleanupStep::Revoke {
                revoke: s(&[ORG2]),
                skipped: s(&[ORG]),
            },
        ),
        (
            "credentials missing: warn and let go",
            CleanupObserved {
                credentials: CredentialsState::Missing,
                ..base.clone()
            },
            CleanupStep::SkipNoCredentials { orgs: s(&[ORG]) },
        ),
        (
            "credentials invalid: warn and let go",
            CleanupObserved {
                credentials: CredentialsState::Invalid("x".into()),
                ..base.clone()
            },
            CleanupStep::SkipNoCredentials { orgs: s(&[ORG]) },
        ),
        (
            "credentials missing but nothing of ours to revoke: let go quietly",
            CleanupObserved {
                credentials: CredentialsState::Missing,
                issued_org: None,
                ..base.clone()
            },
            CleanupStep::Release { skipped: vec![] },
        ),
    ];
    for (what, observed, want) in cases {
        assert_eq!(decide_cleanup(&observed), want, "{what}");
    }
}

#[test]
fn rotation_reasons_are_rotations() {
    assert!(!IssueWhy::NoToken.is_rotation());
    assert!(IssueWhy::SecretTampered.is_rotation());
    assert!(IssueWhy::RotateRequested.is_rotation());
}

#[test]
fn a_transient_failure_is_not_retried_before_its_delay_even_when_an_event_arrives() {
    let hold = RetryHold {
        reason: Reason::AtlasRateLimited,
        generation: Some(1),
        credentials_version: Some("7".into()),
        rotate: None,
        remaining: std::time::Duration::from_secs(3),
    };
    let o = Observed {
        retry_hold: Some(hold.clone()),
        ..fresh()
    };
    assert_eq!(
        decide(&o),
        Step::Hold {
            reason: Reason::AtlasRateLimited,
            after: std::time::Duration::from_secs(3)
        }
    );

    let due = Observed {
        retry_hold: Some(RetryHold {
            remaining: std::time::Duration::ZERO,
            ..hold.clone()
        }),
        ..fresh()
    };
    assert_eq!(
        decide(&due),
        issue(IssueWhy::NoToken, &[]),
        "the delay is over"
    );

    let spec_changed = Observed {
        generation: Some(2),
        retry_hold: Some(hold.clone()),
        ..fresh()
    };
    assert_eq!(
        decide(&spec_changed),
        issue(IssueWhy::NoToken, &[]),
        "a user's change is tried at once"
    );
    let creds_changed = Observed {
        credentials_version: Some("8".into()),
        retry_hold: Some(hold.clone()),
        ..fresh()
    };
    assert_eq!(decide(&creds_changed), issue(IssueWhy::NoToken, &[]));
    // A rotate annotation set during a hold (even one from a long Retry-After) is a user
    // action too: it must not wait for the hold.
    let rotate_requested = Observed {
        rotate: Some("now".into()),
        retry_hold: Some(RetryHold {
            remaining: std::time::Duration::from_secs(300),
            ..hold.clone()
        }),
        ..fresh()
    };
    assert!(
        matches!(decide(&rotate_requested), Step::Issue { .. }),
        "{:?}",
        decide(&rotate_requested)
    );

    let ready_anyway = Observed {
        retry_hold: Some(hold),
        ..ready()
    };
    assert!(
        matches!(decide(&ready_anyway), Step::Keep { .. }),
        "only issuing waits; a current token is kept"
    );
}

/// One row of the adoption table: the marker, the Secret's attempt annotation, the spec now.
struct AdoptCase {
    what: &'static str,
    marker: InFlight,
    secret_attempt: Option<&'static str>,
    org: &'static str,
    access: Vec<&'static str>,
    rotate: Option<&'static str>,
    adopt: bool,
}

#[test]
fn the_adoption_rule_marker_against_secret_annotation() {
    let m = marker(ORG);
    let row = |what, marker: InFlight, secret_attempt, org, access, rotate, adopt| AdoptCase {
        what,
        marker,
        secret_attempt,
        org,
        access,
        rotate,
        adopt,
    };
    let list = vec!["10.0.0.0/24"];
    let cases = vec![
        row(
            "same attempt, same spec",
            m.clone(),
            Some(ATTEMPT),
            ORG,
            list.clone(),
            None,
            true,
        ),
        row(
            "Secret of another attempt",
            m.clone(),
            Some("attempt-0"),
            ORG,
            list.clone(),
            None,
            false,
        ),
        row(
            "Secret without an attempt id",
            m.clone(),
            None,
            ORG,
            list.clone(),
            None,
            false,
        ),
        row(
            "marker without an attempt id (older version)",
            InFlight {
                attempt_id: None,
                ..m.clone()
            },
            None,
            ORG,
            list.clone(),
            None,
            false,
        ),
        row(
            "access list changed since the attempt",
            m.clone(),
            Some(ATTEMPT),
            ORG,
            vec!["10.0.1.0/24"],
            None,
            false,
        ),
        row(
            "rotation requested since the attempt",
            m.clone(),
            Some(ATTEMPT),
            ORG,
            list.clone(),
            Some("r2"),
            false,
        ),
        row(
            "org changed since the attempt",
            m.clone(),
            Some(ATTEMPT),
            ORG2,
            list.clone(),
            None,
            false,
        ),
        row(
            "same access list, duplicated",
            m.clone(),
            Some(ATTEMPT),
            ORG,
            vec!["10.0.0.0/24", "10.0.0.0/24"],
            None,
            true,
        ),
        row(
            "marker without what it was for",
            InFlight {
                access_list_sha256: None,
                ..m.clone()
            },
            Some(ATTEMPT),
            ORG,
            list.clone(),
            None,
            false,
        ),
    ];
    for c in cases {
        let access: Vec<String> = c.access.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            adoptable(&c.marker, c.secret_attempt, c.org, &access, c.rotate),
            c.adopt,
            "{}",
            c.what
        );
    }
}

#[test]
fn a_spec_change_while_down_after_the_secret_write_reissues_instead_of_adopting() {
    // Crash after the Secret write, then the access list was edited: the stored token was
    // issued for the old list. It is not adopted; the issue is redone with a DELETE first.
    let o = Observed {
        issued_for: None,
        in_flight: Some(marker(ORG)),
        target_secret: owned("linkToken", "3333"),
        access_list: vec!["10.9.9.0/24".into()],
        ..ready()
    };
    assert_eq!(decide(&o), issue(IssueWhy::Interrupted, &[ORG]));

    let rotated = Observed {
        issued_for: None,
        in_flight: Some(marker(ORG)),
        target_secret: owned("linkToken", "3333"),
        rotate: Some("now".into()),
        ..ready()
    };
    assert_eq!(decide(&rotated), issue(IssueWhy::Interrupted, &[ORG]));
}

#[test]
fn access_list_hash_is_order_and_duplicate_insensitive() {
    let a = access_list_sha256(&["b".to_string(), "a".to_string()]);
    let b = access_list_sha256(&["a".to_string(), "b".to_string(), "a".to_string()]);
    assert_eq!(a, b);
    assert_ne!(a, access_list_sha256(&["a".to_string()]));
    assert_ne!(
        access_list_sha256(&[]),
        access_list_sha256(&["".to_string()])
    );
}

#[test]
fn a_foreign_secret_with_a_marker_revokes_the_marked_org_before_waiting() {
    let o = Observed {
        issued_for: None,
        in_flight: Some(marker(ORG)),
        target_secret: SecretState::Foreign,
        ..ready()
    };
    match decide(&o) {
        Step::Abandon {
            revoke_orgs,
            reason,
            ..
        } => {
            assert_eq!(revoke_orgs, vec![ORG.to_string()]);
            assert_eq!(reason, Reason::SecretConflict);
        }
        other => panic!("{other:?}"),
    }
    let no_marker = Observed {
        in_flight: None,
        ..o
    };
    assert_eq!(reason(&decide(&no_marker)), Some(Reason::SecretConflict));
}

/// storeToken: false. The token lives nowhere but at the source: no Secret is read, written,
/// adopted or in the way; the token is current only while the source holds it.
#[test]
fn without_a_token_secret_the_source_holds_the_token() {
    let at_source = |yes| TokenStore::SourceOnly { at_source: yes };
    let linked = Observed {
        target_secret: SecretState::Absent,
        token_store: at_source(true),
        ..ready()
    };
    assert_eq!(
        decide(&linked),
        Step::Keep {
            source: SecretSource::Target {
                key: "linkToken".into()
            },
            rewrite_secret: false,
            delete_previous: false,
        },
        "no Secret is written or read"
    );
    // The source lost it (a failed hand-over, a link removed there): revoke, reissue.
    let lost = Observed {
        token_store: at_source(false),
        ..linked.clone()
    };
    assert_eq!(decide(&lost), issue(IssueWhy::NotAtSource, &[ORG]));
    // A Secret of someone else's with the LinkToken's name is not in the way.
    let foreign = Observed {
        target_secret: SecretState::Foreign,
        ..linked.clone()
    };
    assert!(matches!(decide(&foreign), Step::Keep { .. }));
    // An interrupted issue is never adopted (no Secret holds its token): DELETE, then POST.
    let interrupted = Observed {
        issued_for: None,
        in_flight: Some(marker(ORG)),
        target_secret: owned("linkToken", SHA),
        token_store: at_source(false),
        ..ready()
    };
    assert_eq!(decide(&interrupted), issue(IssueWhy::Interrupted, &[ORG]));
    // Spec changes still reissue.
    let rotated = Observed {
        rotate: Some("2".into()),
        ..linked
    };
    assert_eq!(decide(&rotated), issue(IssueWhy::RotateRequested, &[ORG]));
}

#[test]
fn another_process_s_marker_holds_every_atlas_call_until_its_requests_timed_out() {
    let left = std::time::Duration::from_secs(12);
    let waiting = |o: Observed| Observed {
        takeover_wait: Some(left),
        ..o
    };
    let hold = Step::AwaitTakeover { remaining: left };
    // The DELETE of a rotation was in flight when its leader stopped: a late one could
    // revoke the token the next issue POSTs.
    let rotation_interrupted = Observed {
        in_flight: Some(InFlight {
            attempt_id: Some("attempt-2".into()),
            ..marker(ORG)
        }),
        ..ready()
    };
    // (what, observed, step without the wait, step while waiting)
    let cases: Vec<(&str, Observed, Step, Step)> = vec![
        (
            "a rotation's DELETE in flight: no DELETE, no POST yet",
            rotation_interrupted.clone(),
            issue(IssueWhy::Interrupted, &[ORG]),
            hold.clone(),
        ),
        (
            "a first issue interrupted: no DELETE, no POST yet",
            Observed {
                in_flight: Some(marker(ORG)),
                ..fresh()
            },
            issue(IssueWhy::Interrupted, &[ORG]),
            hold.clone(),
        ),
        (
            "an org move with a marker in the old org: no DELETE there yet",
            Observed {
                org_id: ORG2.into(),
                in_flight: Some(marker(ORG2)),
                target_secret: SecretState::Absent,
                ..ready()
            },
            revoke_previous(&[ORG], &[]),
            hold.clone(),
        ),
        (
            "the Secret is not ours: no DELETE before giving up yet",
            Observed {
                issued_for: None,
                in_flight: Some(marker(ORG)),
                target_secret: SecretState::Foreign,
                ..ready()
            },
            Step::Abandon {
                revoke_orgs: vec![ORG.into()],
                reason: Reason::SecretConflict,
                message: String::new(),
            },
            hold.clone(),
        ),
        (
            "the attempt stored its token after its POST: adopted, no Atlas call to wait for",
            Observed {
                issued_for: None,
                in_flight: Some(marker(ORG)),
                target_secret: owned("linkToken", "3333"),
                ..ready()
            },
            Step::Adopt {
                token_key: "linkToken".into(),
            },
            Step::Adopt {
                token_key: "linkToken".into(),
            },
        ),
        (
            "no usable credentials: the same wait as without the marker",
            Observed {
                credentials: CredentialsState::Missing,
                ..rotation_interrupted.clone()
            },
            Step::Wait {
                reason: Reason::CredentialsNotFound,
                message: "the credentials Secret does not exist; waiting for it".into(),
            },
            Step::Wait {
                reason: Reason::CredentialsNotFound,
                message: "the credentials Secret does not exist; waiting for it".into(),
            },
        ),
    ];
    let blank = |s: Step| match s {
        // The Abandon message is prose; the table compares the decision.
        Step::Abandon {
            revoke_orgs,
            reason,
            ..
        } => Step::Abandon {
            revoke_orgs,
            reason,
            message: String::new(),
        },
        s => s,
    };
    for (what, observed, without, with) in cases {
        assert_eq!(blank(decide(&observed)), without, "{what}: waited out");
        assert_eq!(blank(decide(&waiting(observed))), with, "{what}: waiting");
    }
}

#[test]
fn deleting_over_another_process_s_marker_waits_before_any_delete() {
    let left = std::time::Duration::from_secs(5);
    let base = CleanupObserved {
        retain: false,
        issued_org: Some(ORG.into()),
        in_flight_org: Some(ORG.into()),
        held_by_others: vec![],
        credentials: CredentialsState::Valid,
        in_flight_recorded: false,
        takeover_wait: Some(left),
    };
    let hold = CleanupStep::AwaitTakeover { remaining: left };
    // (what, observed, step while waiting)
    let cases: Vec<(&str, CleanupObserved, CleanupStep)> = vec![
        ("Delete: no DELETE yet", base.clone(), hold.clone()),
        (
            "Retain with an orphan to revoke: no DELETE yet",
            CleanupObserved {
                retain: true,
                ..base.clone()
            },
            hold.clone(),
        ),
        (
            "Retain, the attempt's token is in the Secret: let go, no Atlas call",
            CleanupObserved {
                retain: true,
                in_flight_recorded: true,
                ..base.clone()
            },
            CleanupStep::Retain {
                had_token: true,
                revoke_orphan: None,
            },
        ),
        (
            "another LinkToken holds the live link: let go, no Atlas call",
            CleanupObserved {
                held_by_others: vec![ORG.into()],
                ..base.clone()
            },
            CleanupStep::Release {
                skipped: vec![ORG.into()],
            },
        ),
        (
            "no credentials: skipped as ever, never blocked",
            CleanupObserved {
                credentials: CredentialsState::Missing,
                ..base.clone()
            },
            CleanupStep::SkipNoCredentials {
                orgs: vec![ORG.into()],
            },
        ),
    ];
    for (what, observed, want) in cases {
        assert_eq!(decide_cleanup(&observed), want, "{what}");
    }
    let waited_out = CleanupObserved {
        takeover_wait: None,
        ..base
    };
    assert_eq!(
        decide_cleanup(&waited_out),
        CleanupStep::Revoke {
            revoke: vec![ORG.into()],
            skipped: vec![],
        }
    );
}

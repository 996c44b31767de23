//! The audit trail of cycles: a trigger by any key is audited with the cycle it made, and a
//! proposal approved and rejected at the same time ends one way only, with `profiles.json`
//! agreeing with the proposal.

use std::path::Path;
use std::sync::Barrier;

use serde_json::{Value, json};

use crate::admin::audit_entries;
use crate::cycles::write_profiles;
use crate::support::{TestApp, poll_until};

fn profiles_with_one_run_profile(dir: &Path) {
    write_profiles(
        dir,
        &json!([{"profile_id": "p1", "label": "P1", "state": "enabled",
                 "execution_rules": {}, "value_tags": {"tier": "gold"}}]),
        &json!([{"run_profile_id": "r1", "profile_id": "p1", "state": "enabled",
                 "namespace": "ns", "value_tags": {}}]),
    );
}

fn start(dir: &Path, autonomy: bool) -> TestApp {
    TestApp::start_with(|c| {
        c.cycles.profiles_dir = dir.to_path_buf();
        c.cycles.schedule = String::new().into();
        c.cycles.run_profile_schedule = String::new().into();
        c.cycles.namespaces = vec!["raw".into()];
        c.autonomy.enabled = autonomy;
        c.autonomy.allow_mutation = autonomy;
    })
}

fn entries(app: &TestApp, action: &str) -> Vec<Value> {
    audit_entries(app)
        .into_iter()
        .filter(|e| e["action"] == action)
        .collect()
}

fn wait_cycle(app: &TestApp, id: &str) {
    poll_until(&format!("cycle {id} to end"), || {
        let v = app.admin_get(&format!("/api/v1/cycles/{id}")).json();
        (v["cycle"]["status"] != "running")
            .then_some(())
            .ok_or(v["stage"].to_string())
    });
}

/// A cycle triggered by a service key, by an operator key (one cycle, then every run
/// profile) writes one `cycle.trigger` entry per new cycle, with that key as the actor; an
/// existing slot triggered again writes none.
#[test]
fn cycle_triggers_by_service_and_operator_keys_are_audited() {
    let profiles = tempfile::tempdir().unwrap();
    profiles_with_one_run_profile(profiles.path());
    let app = start(profiles.path(), false);
    let (service_id, service) = app.create_key_with(&json!({"name": "svc", "role": "service"}));
    let (operator_id, operator) = app.create_key_with(&json!({"name": "ops", "role": "operator"}));

    let r = app.post_json(
        "/api/v1/cycles/trigger",
        Some(&service),
        &json!({"namespace": "raw", "slot": "2026-01-01T00:00:00Z"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let by_service = r.json()["cycle_run_id"].as_str().unwrap().to_string();
    let r = app.post_json(
        "/api/v1/cycles/trigger",
        Some(&service),
        &json!({"namespace": "raw", "slot": "2026-01-01T00:00:00Z"}),
    );
    assert_eq!(r.status, 200, "the same slot again: {}", r.body);
    let r = app.post_json("/api/v1/run-profiles/trigger", Some(&operator), &json!({}));
    assert!(r.status == 200 || r.status == 201, "{}", r.body);
    let by_operator = r.body.clone();

    let triggers = entries(&app, "cycle.trigger");
    assert_eq!(triggers.len(), 2, "{triggers:?}");
    assert_eq!(triggers[0]["target"], by_service.as_str());
    assert_eq!(triggers[0]["actor"], service_id.as_str());
    assert_eq!(triggers[0]["detail"]["namespace"], "raw");
    assert_eq!(triggers[1]["actor"], operator_id.as_str());
    assert_eq!(triggers[1]["detail"]["run_profile_id"], "r1");
    assert!(
        by_operator.contains(triggers[1]["target"].as_str().unwrap()),
        "{by_operator}"
    );
}

/// Approve and reject of one pending proposal sent at the same moment: one wins, the other
/// answers 409, and `profiles.json` is patched exactly when the proposal says applied.
#[test]
fn approve_and_reject_at_once_leave_the_profile_file_agreeing_with_the_proposal() {
    let profiles = tempfile::tempdir().unwrap();
    profiles_with_one_run_profile(profiles.path());
    let original = std::fs::read_to_string(profiles.path().join("profiles.json")).unwrap();
    let app = start(profiles.path(), true);
    for _ in 0..3 {
        let r = app.post_json(
            "/api/v1/cycles/trigger",
            Some(&app.admin_key),
            &json!({"run_profile_id": "r1"}),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        wait_cycle(&app, r.json()["cycle_run_id"].as_str().unwrap());
    }
    let r = app.post_json(
        "/api/v1/profiles/p1/signals",
        Some(&app.admin_key),
        &json!({}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = app.post_json(
        "/api/v1/profiles/p1/strategy-proposals",
        Some(&app.admin_key),
        &json!({}),
    );
    let pid = r.json()["proposals"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("a proposal: {}", r.body))
        .to_string();

    let barrier = Barrier::new(2);
    let (approve, reject) = std::thread::scope(|scope| {
        let send = |verb: &'static str| {
            let (barrier, app, pid) = (&barrier, &app, &pid);
            scope.spawn(move || {
                barrier.wait();
                app.post_json(
                    &format!("/api/v1/strategy-proposals/{pid}/{verb}"),
                    Some(&app.admin_key),
                    &json!({}),
                )
            })
        };
        let (a, r) = (send("approve"), send("reject"));
        (a.join().unwrap(), r.join().unwrap())
    });
    let mut statuses = [approve.status, reject.status];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{} / {}", approve.body, reject.body);
    let loser = if approve.status == 409 {
        &approve
    } else {
        &reject
    };
    assert_eq!(loser.error_code(), "proposal_decided", "{}", loser.body);

    let proposals = app.admin_get("/api/v1/strategy-proposals").json();
    let proposal = proposals["proposals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == pid.as_str())
        .cloned()
        .unwrap();
    let file = std::fs::read_to_string(profiles.path().join("profiles.json")).unwrap();
    let on_disk: Value = serde_json::from_str(&file).unwrap();
    match proposal["status"].as_str().unwrap() {
        "applied" => {
            assert_eq!(approve.status, 200);
            assert_eq!(on_disk[0]["value_tags"]["performance"], "elevated");
        }
        "rejected" => {
            assert_eq!(reject.status, 200);
            assert_eq!(file, original, "a rejected proposal patched profiles.json");
        }
        other => panic!("proposal ended {other}: {proposal}"),
    }
    let decisions =
        entries(&app, "proposal.approve").len() + entries(&app, "proposal.reject").len();
    assert_eq!(decisions, 1);
}

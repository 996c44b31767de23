//! Crash durability: the real `keel` binary is killed with SIGKILL at random moments while
//! writers are in flight; after every restart each acknowledged write is there, nothing is
//! there twice or half-done, and the audit chain verifies.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{KeelProcess, Rng, agent, call, run_keel, send};

/// Kill/restart rounds on one data dir.
const ROUNDS: u64 = 20;
/// Concurrent writer threads per round.
const WRITERS: usize = 8;
/// Every `REVOKE_EVERY`-th key a writer creates is revoked right after its creation.
const REVOKE_EVERY: usize = 4;
/// Tokens of earlier acknowledged keys re-checked after each restart (besides each writer's last).
const TOKEN_SAMPLE: usize = 8;

/// A key whose creation was answered 201.
#[derive(Debug, Clone)]
struct Acked {
    id: String,
    name: String,
    token: String,
}

/// What one writer thread saw during one round.
#[derive(Debug, Default)]
struct WriterLog {
    /// Keys created and acknowledged, in order.
    created: Vec<Acked>,
    /// Ids whose revocation was acknowledged.
    revoked: Vec<String>,
    /// The create request that got no answer (its key may or may not have been committed).
    create_in_flight: Option<String>,
    /// The revoke request that got no answer (likewise).
    revoke_in_flight: Option<String>,
    /// Answers a live server should never give.
    unexpected: Vec<String>,
    /// The transport error that ended the writer.
    stopped_by: Option<String>,
}

/// Creates keys (revoking every few) as fast as the server answers, until the server is gone.
fn write_until_killed(
    base: String,
    admin: String,
    round: u64,
    writer: usize,
    start: Arc<Barrier>,
) -> WriterLog {
    let agent = agent();
    let mut log = WriterLog::default();
    start.wait();
    for i in 0usize.. {
        let name = format!("r{round}-w{writer}-{i}");
        let body = json!({"name": name, "role": "viewer"});
        let answer = match send(&agent, &base, "POST", "/api/v1/keys", &admin, Some(&body)) {
            Ok(r) => r,
            Err(e) => {
                log.create_in_flight = Some(name);
                log.stopped_by = Some(e);
                return log;
            }
        };
        let parsed: Option<Value> = serde_json::from_str(&answer.body).ok();
        let acked = parsed.as_ref().and_then(|v| {
            Some(Acked {
                id: v["key"]["id"].as_str()?.to_string(),
                name: v["key"]["name"].as_str()?.to_string(),
                token: v["token"].as_str()?.to_string(),
            })
        });
        match (answer.status, acked) {
            (201, Some(acked)) if acked.name == name => log.created.push(acked),
            _ => {
                log.unexpected
                    .push(format!("create {name}: {} {}", answer.status, answer.body));
                return log;
            }
        }
        if i % REVOKE_EVERY == REVOKE_EVERY - 1 {
            let id = log.created.last().expect("just created").id.clone();
            let path = format!("/api/v1/keys/{id}/revoke");
            match send(&agent, &base, "POST", &path, &admin, None) {
                Ok(r) if r.status == 200 && r.json()["key"]["status"] == "revoked" => {
                    log.revoked.push(id)
                }
                Ok(r) => {
                    log.unexpected
                        .push(format!("revoke {id}: {} {}", r.status, r.body));
                    return log;
                }
                Err(e) => {
                    log.revoke_in_flight = Some(id);
                    log.stopped_by = Some(e);
                    return log;
                }
            }
        }
    }
    unreachable!("the loop only ends by returning")
}

/// A key as GET /api/v1/keys lists it.
struct Listed {
    name: String,
    status: String,
}

fn list_keys(agent: &ureq::Agent, base: &str, admin: &str) -> HashMap<String, Listed> {
    let r = call(agent, base, "GET", "/api/v1/keys", admin);
    assert_eq!(
        r.status, 200,
        "GET /api/v1/keys with the first start's admin key: {}",
        r.body
    );
    let mut keys = HashMap::new();
    for k in r.json()["keys"].as_array().expect("keys array") {
        let id = k["id"].as_str().expect("id").to_string();
        let listed = Listed {
            name: k["name"].as_str().expect("name").to_string(),
            status: k["status"].as_str().expect("status").to_string(),
        };
        assert!(
            keys.insert(id.clone(), listed).is_none(),
            "{id} listed twice"
        );
    }
    keys
}

/// Every audit entry, paged through GET /api/v1/audit.
fn all_audit_entries(agent: &ureq::Agent, base: &str, admin: &str) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut after = 0u64;
    loop {
        let r = call(
            agent,
            base,
            "GET",
            &format!("/api/v1/audit?after={after}&limit=1000"),
            admin,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let page = r.json();
        let got = page["entries"].as_array().expect("entries").clone();
        for e in &got {
            let seq = e["seq"].as_u64().expect("seq");
            assert_eq!(seq, entries.len() as u64 + 1, "audit entries out of order");
            entries.push(e.clone());
        }
        match page["next_after"].as_u64() {
            Some(next) => after = next,
            None => return entries,
        }
    }
}

/// What the checks after a restart carry from one round to the next.
struct Known {
    /// Every key id seen after a restart (so committed), with its name.
    keys: HashMap<String, String>,
    /// Every id seen revoked after a restart.
    revoked: HashSet<String>,
    /// Every acknowledged key, for sampling tokens.
    acked: Vec<Acked>,
}

/// Checks the restarted server against what was acknowledged; returns the number of keys whose
/// commit raced the kill (present, but the answer was lost).
fn check_after_restart(
    proc: &KeelProcess,
    admin: &str,
    known: &mut Known,
    logs: &[WriterLog],
    rng: &mut Rng,
) -> (usize, usize, u64) {
    let agent = agent();
    let base = &proc.base;
    let keys = list_keys(&agent, base, admin);

    // Everything acknowledged, and everything seen after an earlier restart, is still there.
    let mut expected = known.keys.clone();
    for a in logs.iter().flat_map(|l| &l.created) {
        assert!(
            expected.insert(a.id.clone(), a.name.clone()).is_none(),
            "id {} acknowledged twice",
            a.id
        );
    }
    for (id, name) in &expected {
        let listed = keys
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged key {id} ({name}) is missing after restart"));
        assert_eq!(&listed.name, name, "key {id} changed its name");
    }
    // Anything more is a create whose answer was lost to the kill: at most one per writer,
    // and exactly the request that writer had in flight.
    let in_flight: HashSet<&str> = logs
        .iter()
        .filter_map(|l| l.create_in_flight.as_deref())
        .collect();
    let mut unacked = 0;
    for (id, listed) in &keys {
        if !expected.contains_key(id) {
            assert!(
                in_flight.contains(listed.name.as_str()),
                "key {id} ({}) exists but was never acknowledged nor in flight",
                listed.name
            );
            unacked += 1;
        }
    }
    assert!(unacked <= WRITERS);
    let names: HashSet<&str> = keys.values().map(|k| k.name.as_str()).collect();
    assert_eq!(names.len(), keys.len(), "a key name exists twice");

    // Revocations: acknowledged ones hold; extra ones are exactly the in-flight ones.
    let revoked: HashSet<String> = keys
        .iter()
        .filter(|(_, k)| k.status == "revoked")
        .map(|(id, _)| id.clone())
        .collect();
    let mut expected_revoked = known.revoked.clone();
    expected_revoked.extend(logs.iter().flat_map(|l| l.revoked.iter().cloned()));
    for id in &expected_revoked {
        assert!(
            revoked.contains(id),
            "acknowledged revocation of {id} is lost"
        );
    }
    for id in revoked.difference(&expected_revoked) {
        assert!(
            logs.iter()
                .any(|l| l.revoke_in_flight.as_deref() == Some(id.as_str())),
            "key {id} is revoked but no revocation of it was acknowledged or in flight"
        );
    }

    // The audit log holds exactly one `key.create` per key and one `key.revoke` per
    // revoked key: a key and its entry were committed together or not at all.
    let entries = all_audit_entries(&agent, base, admin);
    let mut created_in_log = HashSet::new();
    let mut revoked_in_log = HashSet::new();
    for e in &entries {
        let target = e["target"].as_str().expect("target").to_string();
        match e["action"].as_str().expect("action") {
            "key.create" => assert!(
                created_in_log.insert(target.clone()),
                "two key.create entries for {target}"
            ),
            "key.revoke" => assert!(
                revoked_in_log.insert(target.clone()),
                "two key.revoke entries for {target}"
            ),
            other => panic!("unexpected audit action {other}"),
        }
    }
    let key_ids: HashSet<String> = keys.keys().cloned().collect();
    let without_entry: Vec<_> = key_ids.difference(&created_in_log).collect();
    let without_key: Vec<_> = created_in_log.difference(&key_ids).collect();
    assert!(
        without_entry.is_empty() && without_key.is_empty(),
        "keys without a key.create entry: {without_entry:?}; key.create entries without a key: {without_key:?}"
    );
    let revoked_without_entry: Vec<_> = revoked.difference(&revoked_in_log).collect();
    let entry_without_revoked: Vec<_> = revoked_in_log.difference(&revoked).collect();
    assert!(
        revoked_without_entry.is_empty() && entry_without_revoked.is_empty(),
        "revoked keys without a key.revoke entry: {revoked_without_entry:?}; \
         key.revoke entries for keys not revoked: {entry_without_revoked:?}"
    );

    let r = call(&agent, base, "POST", "/api/v1/audit/verify", admin);
    assert_eq!(r.status, 200, "{}", r.body);
    let report = r.json();
    assert_eq!(report["ok"], true, "audit verify after restart: {report}");
    assert_eq!(report["entries"], entries.len() as u64, "{report}");

    // Tokens still authenticate (or are refused as revoked): each writer's last
    // acknowledged key and a sample of older ones.
    let mut sample: Vec<Acked> = logs
        .iter()
        .filter_map(|l| l.created.last().cloned())
        .collect();
    for a in logs.iter().flat_map(|l| &l.created) {
        known.acked.push(a.clone());
    }
    for _ in 0..TOKEN_SAMPLE.min(known.acked.len()) {
        let i = rng.next() as usize % known.acked.len();
        sample.push(known.acked[i].clone());
    }
    for a in &sample {
        let r = call(&agent, base, "GET", "/api/v1/audit/head", &a.token);
        if revoked.contains(&a.id) {
            assert_eq!(r.status, 401, "revoked key {} answered {}", a.name, r.body);
            assert_eq!(r.error_code(), "key_revoked");
        } else {
            assert_eq!(r.status, 200, "token of {} refused: {}", a.name, r.body);
        }
    }

    known.keys = keys.into_iter().map(|(id, k)| (id, k.name)).collect();
    known.revoked = revoked;
    (unacked, known.keys.len(), entries.len() as u64)
}

fn spawn(dir: &std::path::Path) -> KeelProcess {
    KeelProcess::spawn(dir, &[]).unwrap_or_else(|log| panic!("keel did not start:\n{log}"))
}

/// SIGKILL at random moments under concurrent key writes, 20 rounds on one data dir: after each
/// restart every acknowledged create and revoke is there, keys and their audit entries were
/// committed together, the chain verifies, and tokens still work. Finally a clean stop and an
/// offline `keel audit verify`.
#[test]
fn sigkill_under_concurrent_writes_loses_no_acknowledged_write() {
    let mut rng = Rng::for_test("sigkill_under_concurrent_writes_loses_no_acknowledged_write");
    let dir = tempfile::tempdir().expect("temp dir");

    let mut proc = spawn(dir.path());
    let admin = proc.admin_key();
    let mut known = Known {
        keys: list_keys(&agent(), &proc.base, &admin)
            .into_iter()
            .map(|(id, k)| (id, k.name))
            .collect(),
        revoked: HashSet::new(),
        acked: Vec::new(),
    };
    assert_eq!(
        known.keys.len(),
        1,
        "a fresh data dir has the initial admin only"
    );

    let started = Instant::now();
    let (mut total_creates, mut total_revokes, mut total_unacked) = (0, 0, 0);
    let mut last_entries = 0;
    for round in 0..ROUNDS {
        let delay = Duration::from_millis(rng.between(20, 300));
        let start = Arc::new(Barrier::new(WRITERS + 1));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (base, admin, start) = (proc.base.clone(), admin.clone(), Arc::clone(&start));
                std::thread::spawn(move || write_until_killed(base, admin, round, w, start))
            })
            .collect();
        start.wait();
        std::thread::sleep(delay);
        proc.kill9();
        let logs: Vec<WriterLog> = writers
            .into_iter()
            .map(|h| h.join().expect("writer thread"))
            .collect();
        for (w, log) in logs.iter().enumerate() {
            assert!(
                log.unexpected.is_empty(),
                "round {round} writer {w}: {:?}",
                log.unexpected
            );
            assert!(
                log.stopped_by.is_some(),
                "writer {w} stopped without the kill"
            );
        }
        let creates: usize = logs.iter().map(|l| l.created.len()).sum();
        let revokes: usize = logs.iter().map(|l| l.revoked.len()).sum();

        proc = spawn(dir.path());
        let (unacked, keys, entries) =
            check_after_restart(&proc, &admin, &mut known, &logs, &mut rng);
        println!(
            "round {round:2}: killed after {:3} ms; acknowledged {creates:4} creates, {revokes:3} revokes; \
             all found after restart (+{unacked} committed whose answer was lost); \
             {keys} keys, {entries} audit entries, chain ok",
            delay.as_millis()
        );
        total_creates += creates;
        total_revokes += revokes;
        total_unacked += unacked;
        last_entries = entries;
    }
    println!(
        "{ROUNDS} kills in {:.1} s: {total_creates} acknowledged creates and {total_revokes} \
         acknowledged revokes all found; {total_unacked} unacknowledged commits",
        started.elapsed().as_secs_f64()
    );
    assert!(
        total_creates >= ROUNDS as usize,
        "too few writes were acknowledged ({total_creates}) for the kills to test anything"
    );

    assert_eq!(proc.terminate(), 0, "clean stop after the last restart");
    let data_dir = dir.path().to_str().expect("utf-8 path");
    let out = run_keel(&["audit", "verify"], &[("KEEL_DATA_DIR", data_dir)]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("OK:"), "{out:?}");
    let counted: u64 = out
        .stdout
        .trim_start_matches("OK: ")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no entry count in {}", out.stdout));
    assert_eq!(
        counted, last_entries,
        "offline verify saw another log than the server: {}",
        out.stdout
    );
}

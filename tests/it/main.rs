//! keel's integration tests: one binary, the real router on 127.0.0.1:0 or the real `keel`
//! binary, temporary data dirs.

mod admin;
mod api;
mod browser;
mod circuits;
mod cli;
mod crash;
mod cycle_audit;
mod cycles;
mod cycles_crash;
mod doctor;
mod events;
mod exec_crash;
mod exec_safety;
mod inbox;
mod keys;
mod llm;
mod operations;
mod queue;
mod queue_crash;
mod receiver;
mod records;
mod retention;
mod roles;
mod sealing;
mod security;
mod support;
mod tamper;
mod tidy;
mod validation;
mod waiting;
mod workflow;

/// The harness starts, serves and stops; the first start writes an admin key that works.
#[test]
fn harness_smoke() {
    let app = support::TestApp::start();
    assert_eq!(app.get("/health", None).status, 200);
    assert_eq!(app.admin_get("/api/v1/system").status, 200);
    let proc = support::KeelProcess::spawn(&app.dir.path().join("proc"), &[]).expect("spawns");
    let r = support::request(
        &proc.base,
        "GET",
        "/api/v1/keys",
        Some(&proc.admin_key()),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(proc.terminate(), 0);
}

//! Unit tests of the budget room: costs, days, reservations under concurrency, settling and
//! overrides.

use super::*;
use crate::clock::ManualClock;
use crate::config::LlmProviderConfig;
use crate::store::StoreOptions;

const START: Millis = 1_767_225_600_000; // 2026-01-01T00:00:00Z

struct Fixture {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    budgets: Arc<Budgets>,
    store: Arc<Store>,
}

fn fixture(daily_usd: f64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(Store::open(&dir.path().join("keel.redb"), StoreOptions::default()).unwrap());
    let audit = Arc::new(Audit::load_or_create(dir.path(), 1000).unwrap());
    let clock = Arc::new(ManualClock::new(START));
    let mut config = LlmConfig::default();
    config.providers.insert(
        "p".into(),
        LlmProviderConfig {
            base_url: "http://127.0.0.1:9".into(),
            api_key: None,
            model: "m".into(),
            input_usd_per_1k_tokens: 1.0,
            output_usd_per_1k_tokens: 2.0,
            max_tokens: 100,
            daily_budget_usd: daily_usd,
        },
    );
    let budgets = Arc::new(
        Budgets::load(
            &config,
            Arc::clone(&store),
            audit,
            clock.clone(),
            Arc::new(Metrics::new("test")),
        )
        .unwrap(),
    );
    Fixture {
        _dir: dir,
        clock,
        budgets,
        store,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn costs_are_exact_and_round_up() {
    // 1 USD per 1K tokens is 1,000,000 nano-USD per token.
    assert_eq!(cost_micros(10, 5, 1_000_000, 2_000_000), 20_000);
    // 0.15 USD per 1M tokens = 150 nano-USD per token: 7 tokens cost 1.05 µUSD → 2.
    assert_eq!(cost_micros(7, 0, 150, 0), 2);
    assert_eq!(cost_micros(0, 0, 150, 600), 0);
    assert_eq!(
        cost_micros(u64::MAX, u64::MAX, u64::MAX, u64::MAX),
        u64::MAX
    );
}

#[test]
fn the_prompt_estimate_bounds_the_text() {
    let messages = vec![serde_json::json!({"role": "user", "content": "héllo wörld"})];
    let estimate = estimate_prompt_tokens(&messages);
    let text_bytes = "héllo wörld".len() as u64;
    assert!(estimate >= text_bytes + 4 + 3, "{estimate}");
    assert_eq!(
        estimate,
        3 + 4 + serde_json::to_string(&messages[0]).unwrap().len() as u64
    );
    assert_eq!(estimate_prompt_tokens(&[]), 3);
}

#[test]
fn days_are_utc() {
    assert_eq!(day_label(day_of(START)), "2026-01-01");
    assert_eq!(day_label(day_of(START + DAY_MS - 1)), "2026-01-01");
    assert_eq!(day_label(day_of(START + DAY_MS)), "2026-01-02");
    assert_eq!(day_start_ms(day_of(START + 5_000)), START);
}

#[test]
fn reservations_never_overrun_the_budget_under_concurrency() {
    let f = fixture(1.0); // 1,000,000 µUSD
    let rt = runtime();
    // 64 concurrent reservations of 300,000 µUSD: exactly 3 fit.
    let granted: Vec<Result<Reservation, Refusal>> = rt.block_on(async {
        let handles: Vec<_> = (0..64)
            .map(|_| {
                let b = Arc::clone(&f.budgets);
                tokio::spawn(async move { b.reserve("p", 300_000, 0).await.unwrap() })
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    });
    let held: Vec<&Reservation> = granted.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(held.len(), 3);
    let refused: Vec<&Refusal> = granted.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        refused
            .iter()
            .all(|r| matches!(r, Refusal::InFlight { .. })),
        "room may come back the same day: {refused:?}"
    );
    let view = rt.block_on(f.budgets.view(7)).unwrap();
    assert_eq!(view[0].reserved_micros, 900_000);
    assert_eq!(view[0].remaining_micros, 100_000);
    assert_eq!(view[0].in_flight, 3);
    drop(granted);
    let view = rt.block_on(f.budgets.view(7)).unwrap();
    assert_eq!(
        (
            view[0].reserved_micros,
            view[0].in_flight,
            view[0].spent_micros
        ),
        (0, 0, 0),
        "dropped reservations give their budget back"
    );
}

#[test]
fn settling_records_the_real_cost_and_the_day_rolls_over() {
    let f = fixture(0.05); // 50,000 µUSD
    let rt = runtime();
    let r = rt
        .block_on(f.budgets.reserve("p", 30_000, 0))
        .unwrap()
        .unwrap();
    rt.block_on(r.settle(Spend {
        tokens_in: 10,
        tokens_out: 5,
        usd_micros: 20_000,
    }))
    .unwrap();
    // 20,000 spent: a 30,001 call would overrun the day → next UTC day.
    match rt.block_on(f.budgets.reserve("p", 30_001, 0)).unwrap() {
        Err(Refusal::Tomorrow { until, message }) => {
            assert_eq!(until, START + DAY_MS);
            assert!(message.contains("2026-01-01"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // More than the whole daily budget can never run.
    assert!(matches!(
        rt.block_on(f.budgets.reserve("p", 50_001, 0)).unwrap(),
        Err(Refusal::NeverFits { .. })
    ));
    // The ledger has the row.
    let view = rt.block_on(f.budgets.view(7)).unwrap();
    assert_eq!(view[0].spent_micros, 20_000);
    assert_eq!(
        view[0].history,
        vec![(
            day_of(START),
            LedgerDay {
                tokens_in: 10,
                tokens_out: 5,
                requests: 1,
                usd_micros: 20_000
            }
        )]
    );
    // Next day: room again; yesterday stays in the history.
    f.clock.advance_ms(DAY_MS);
    let r = rt.block_on(f.budgets.reserve("p", 30_001, 0)).unwrap();
    assert!(r.is_ok(), "{r:?}");
    drop(r);
    let view = rt.block_on(f.budgets.view(7)).unwrap();
    assert_eq!(view[0].spent_micros, 0);
    assert_eq!(view[0].history.len(), 1);
    assert_eq!(view[0].history[0].0, day_of(START));
    drop(f.store);
}

#[test]
fn overrides_change_the_budget_and_are_audited() {
    let f = fixture(0.01);
    let rt = runtime();
    assert!(matches!(
        rt.block_on(f.budgets.reserve("p", 20_000, 0)).unwrap(),
        Err(Refusal::NeverFits { .. })
    ));
    let view = rt
        .block_on(f.budgets.set(
            "tester",
            "p",
            BudgetChange {
                daily_micros: None,
                today_micros: Some(Some(30_000)),
            },
        ))
        .unwrap();
    assert_eq!(view.budget_micros, 30_000);
    assert_eq!(view.source, BudgetSource::TodayOverride);
    let r = rt.block_on(f.budgets.reserve("p", 20_000, 0)).unwrap();
    assert!(r.is_ok());
    drop(r);
    // Tomorrow the one-day override no longer applies.
    f.clock.advance_ms(DAY_MS);
    let view = rt.block_on(f.budgets.view(1)).unwrap();
    assert_eq!(
        (view[0].budget_micros, view[0].source),
        (10_000, BudgetSource::Config)
    );
    assert!(matches!(
        rt.block_on(f.budgets.set("tester", "nope", BudgetChange::default())),
        Err(BudgetError::NotFound(_))
    ));
    assert!(matches!(
        rt.block_on(f.budgets.set("tester", "p", BudgetChange::default())),
        Err(BudgetError::Invalid(_))
    ));
    let entries = f
        .store
        .read_blocking(|tx| crate::audit::list(tx, 0, 100))
        .unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].action, "budget.set");
    assert_eq!(entries[0].target, "p");
    let detail: serde_json::Value = serde_json::from_str(&entries[0].detail).unwrap();
    assert_eq!(detail["today_budget_usd"], 0.03);
}

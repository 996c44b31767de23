//! Ids derived from what a cycle is, so doing something again names the same thing: the key
//! slots and initiations are unique under, the initiation hash, and the ids of the tasks a
//! stage hands to the queue (and the `webhook-id` each dispatch is delivered with).

use uuid::Uuid;

use super::model::Stage;

/// The key initiations and slots are unique under: the run profile id, or `raw:<namespace>`.
pub fn run_profile_key(run_profile_id: Option<&str>, namespace: &str) -> String {
    match run_profile_id {
        Some(id) => id.to_string(),
        None => format!("raw:{namespace}"),
    }
}

/// The deterministic initiation hash: blake3 of (run profile key, slot, profile version),
/// length-prefixed, as hex.
pub fn initiation_hash(run_profile_key: &str, slot: &str, profile_version: u64) -> String {
    let mut h = blake3::Hasher::new_derive_key("keel cycle initiation v1");
    for part in [run_profile_key.as_bytes(), slot.as_bytes()] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update(&profile_version.to_le_bytes());
    h.finalize().to_hex().to_string()
}

/// A task id derived from (cycle, stage, key): a UUIDv7 with the cycle's time, so it sorts
/// with the cycle, and the rest from blake3. Running a stage again names the same tasks.
pub fn derived_task_id(cycle_id: Uuid, stage: Stage, key: &str) -> Uuid {
    let mut h = blake3::Hasher::new_derive_key("keel cycle task v1");
    h.update(cycle_id.as_bytes());
    h.update(stage.as_str().as_bytes());
    h.update(&[0]);
    h.update(key.as_bytes());
    let digest = h.finalize();
    let mut rand = [0u8; 10];
    rand.copy_from_slice(&digest.as_bytes()[..10]);
    let millis = (cycle_id.as_u128() >> 80) as u64;
    uuid::Builder::from_unix_timestamp_millis(millis, &rand).into_uuid()
}

/// The task id of a transformation step (`stage` is a tier) or normalization batch.
pub fn step_task_id(cycle_id: Uuid, stage: Stage, index: usize) -> Uuid {
    derived_task_id(cycle_id, stage, &index.to_string())
}

/// The task id of the dispatch of a cycle to `endpoint`.
pub fn dispatch_task_id(cycle_id: Uuid, endpoint: &str) -> Uuid {
    derived_task_id(cycle_id, Stage::DispatchEnqueued, endpoint)
}

/// The `webhook-id` the dispatch of a cycle to `endpoint` is delivered with (derived from
/// (cycle, stage, endpoint); the same on every attempt and after any crash).
pub fn dispatch_webhook_id(cycle_id: Uuid, endpoint: &str) -> String {
    format!("msg_{}", dispatch_task_id(cycle_id, endpoint).simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initiation_hash_is_deterministic_and_separates_fields() {
        let a = initiation_hash("rp1", "2026-01-01T00:00:00.000Z", 1);
        assert_eq!(a, initiation_hash("rp1", "2026-01-01T00:00:00.000Z", 1));
        assert_ne!(a, initiation_hash("rp1", "2026-01-01T00:00:00.000Z", 2));
        assert_ne!(a, initiation_hash("rp2", "2026-01-01T00:00:00.000Z", 1));
        assert_ne!(initiation_hash("ab", "c", 0), initiation_hash("a", "bc", 0));
    }

    #[test]
    fn derived_ids_are_stable_v7_ids_in_the_cycles_time() {
        let cycle = Uuid::now_v7();
        let a = dispatch_task_id(cycle, "aurora");
        assert_eq!(a, dispatch_task_id(cycle, "aurora"));
        assert_ne!(a, dispatch_task_id(cycle, "other"));
        assert_ne!(a, step_task_id(cycle, Stage::Tier1, 0));
        assert_eq!(a.get_version_num(), 7);
        assert_eq!(a.as_u128() >> 80, cycle.as_u128() >> 80);
        assert_eq!(
            dispatch_webhook_id(cycle, "aurora"),
            format!("msg_{}", a.simple())
        );
    }
}

//! Unit tests of the auth room: key creation, checks, expiry, revocation, rotation, last use.

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::store::StoreOptions;

struct Fixture {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    auth: Auth,
    store: Arc<Store>,
    audit: Arc<Audit>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        Store::open(
            &dir.path().join("keel.redb"),
            StoreOptions {
                max_batch: 8,
                commit_observer: None,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let audit = Arc::new(Audit::load_or_create(dir.path(), 1000).unwrap());
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let hash_key = Auth::hash_key(None, dir.path()).unwrap();
    let events = Arc::new(EventBus::new(64, &crate::metrics::Metrics::new("test")));
    let auth = Auth::load(
        Arc::clone(&store),
        Arc::clone(&audit),
        clock.clone(),
        hash_key,
        Arc::clone(&events),
    )
    .unwrap();
    Fixture {
        _dir: dir,
        clock,
        auth,
        store,
        audit,
    }
}

fn new_key(role: Role) -> NewKey {
    NewKey {
        name: "k".into(),
        role,
        expires_at: None,
    }
}

#[tokio::test]
async fn created_key_authenticates_and_wrong_secret_does_not() {
    let f = fixture();
    let created = f
        .auth
        .create("system", new_key(Role::Operator))
        .await
        .unwrap();
    assert!(created.token.starts_with("keel_"));
    let p = f.auth.authenticate(&created.token).unwrap();
    assert_eq!(p.role, Role::Operator);
    let mut wrong = created.token.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'A' { 'B' } else { 'A' });
    assert!(matches!(
        f.auth.authenticate(&wrong),
        Err(AuthError::InvalidKey)
    ));
    assert!(matches!(
        f.auth.authenticate("keel_nonsense"),
        Err(AuthError::InvalidKey)
    ));
    assert!(matches!(
        f.auth.authenticate(""),
        Err(AuthError::InvalidKey)
    ));
}

#[tokio::test]
async fn keys_survive_reload_and_the_secret_is_not_stored() {
    let f = fixture();
    let created = f
        .auth
        .create("system", new_key(Role::Viewer))
        .await
        .unwrap();
    // keel_ + 32 hex + _ ; the secret itself may contain `_`.
    let secret = created.token[KEY_PREFIX.len() + 33..].to_string();
    assert!(secret.len() >= 43);
    let raw: Vec<u8> = std::fs::read(f.store.path()).unwrap();
    assert!(!raw.windows(secret.len()).any(|w| w == secret.as_bytes()));
    let again = Auth::load(
        Arc::clone(&f.store),
        Arc::clone(&f.audit),
        f.clock.clone(),
        f.auth.hash_key,
        Arc::clone(&f.auth.events),
    )
    .unwrap();
    assert_eq!(
        again.authenticate(&created.token).unwrap().key_id,
        created.view.id
    );
}

#[tokio::test]
async fn expiry_revocation_and_rotation_overlap() {
    let f = fixture();
    let expiring = f
        .auth
        .create(
            "system",
            NewKey {
                expires_at: Some(f.clock.now_ms() + 1_000),
                ..new_key(Role::Viewer)
            },
        )
        .await
        .unwrap();
    f.auth.authenticate(&expiring.token).unwrap();
    f.clock.advance_ms(1_000);
    assert!(matches!(
        f.auth.authenticate(&expiring.token),
        Err(AuthError::Expired)
    ));

    let revoked = f
        .auth
        .create("system", new_key(Role::Viewer))
        .await
        .unwrap();
    f.auth
        .revoke("system", revoked.view.id, false)
        .await
        .unwrap();
    assert!(matches!(
        f.auth.authenticate(&revoked.token),
        Err(AuthError::Revoked)
    ));

    let old = f
        .auth
        .create("system", new_key(Role::Service))
        .await
        .unwrap();
    let new = f
        .auth
        .rotate(
            "system",
            old.view.id,
            Rotation {
                overlap_ms: 60_000,
                expires_at: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(new.view.role, Role::Service);
    assert_eq!(new.view.rotated_from, Some(old.view.id));
    f.auth.authenticate(&old.token).unwrap();
    f.auth.authenticate(&new.token).unwrap();
    f.clock.advance_ms(60_000);
    assert!(matches!(
        f.auth.authenticate(&old.token),
        Err(AuthError::Expired)
    ));
    f.auth.authenticate(&new.token).unwrap();

    let head = f.store.read_blocking(audit::head).unwrap();
    assert_eq!(head.seq, 5, "create, create, revoke, create, rotate");
}

#[tokio::test]
async fn last_used_is_flushed_in_one_write() {
    let f = fixture();
    let k = f
        .auth
        .create("system", new_key(Role::Viewer))
        .await
        .unwrap();
    f.clock.advance_ms(5_000);
    f.auth.authenticate(&k.token).unwrap();
    let at = f.clock.now_ms();
    assert_eq!(f.auth.get(k.view.id).unwrap().last_used_at, Some(at));
    assert_eq!(f.auth.flush_last_used().await.unwrap(), 1);
    assert_eq!(f.auth.flush_last_used().await.unwrap(), 0);
    let again = Auth::load(
        Arc::clone(&f.store),
        Arc::clone(&f.audit),
        f.clock.clone(),
        f.auth.hash_key,
        Arc::clone(&f.auth.events),
    )
    .unwrap();
    assert_eq!(again.get(k.view.id).unwrap().last_used_at, Some(at));
}

#[tokio::test]
async fn initial_admin_is_created_once_with_a_private_file() {
    let f = fixture();
    let path = f
        .auth
        .ensure_initial_admin(f._dir.path())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fsutil::mode_of(&path).unwrap(), 0o600);
    let token = std::fs::read_to_string(&path).unwrap();
    assert_eq!(f.auth.authenticate(token.trim()).unwrap().role, Role::Admin);
    assert!(
        f.auth
            .ensure_initial_admin(f._dir.path())
            .await
            .unwrap()
            .is_none()
    );
}

#[test]
fn roles_are_ordered() {
    assert!(
        Role::Viewer < Role::Service
            && Role::Service < Role::Operator
            && Role::Operator < Role::Admin
    );
    let p = Principal {
        key_id: Uuid::nil(),
        name: "x".into(),
        role: Role::Service,
    };
    assert!(p.require(Role::Service).is_ok());
    assert!(matches!(
        p.require(Role::Operator),
        Err(AuthError::Forbidden { .. })
    ));
}

#[tokio::test]
async fn key_changes_are_published_after_they_are_stored() {
    let f = fixture();
    let mut events = f.auth.events.subscribe();
    let mut new = new_key(Role::Viewer);
    new.expires_at = Some(f.clock.now_ms() + 1_000);
    let created = f.auth.create("t", new).await.unwrap();
    let id = created.view.id;
    let next = |e: crate::events::Received| match e {
        crate::events::Received::Event(e) => (*e).clone(),
        other => panic!("expected an event, got {other:?}"),
    };
    assert_eq!(
        next(events.recv().await),
        BusEvent::KeyCreated { key_id: id }
    );
    // What the event announces is already durable: a fresh load sees the key.
    let reloaded = Auth::load(
        Arc::clone(&f.store),
        Arc::clone(&f.audit),
        f.clock.clone(),
        f.auth.hash_key,
        Arc::clone(&f.auth.events),
    )
    .unwrap();
    assert!(reloaded.get(id).is_ok());
    assert_eq!(f.auth.announce_expired(), 0);
    f.clock.advance_ms(2_000);
    assert_eq!(f.auth.announce_expired(), 1);
    assert_eq!(f.auth.announce_expired(), 0, "announced once");
    assert_eq!(
        next(events.recv().await),
        BusEvent::KeyExpired { key_id: id }
    );
    let other = f.auth.create("t", new_key(Role::Viewer)).await.unwrap();
    f.auth.revoke("t", other.view.id, false).await.unwrap();
    assert_eq!(
        next(events.recv().await),
        BusEvent::KeyCreated {
            key_id: other.view.id
        }
    );
    assert_eq!(
        next(events.recv().await),
        BusEvent::KeyRevoked {
            key_id: other.view.id
        }
    );
}

//! Leader election on a real Lease: one leader at a time, hand-over on release, and
//! take-over after the holder stops renewing.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use phalanx_scheduler::leader::{LeaderConfig, LeaderElector};
use phalanx_testenv::{Options, TestEnv};

fn config(identity: &str) -> LeaderConfig {
    LeaderConfig {
        namespace: "default".into(),
        name: "phalanx-scheduler".into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(2),
        retry_period: Duration::from_millis(200),
    }
}

async fn holder(env: &TestEnv) -> Option<String> {
    let lease = Api::<Lease>::namespaced(env.client(), "default").get("phalanx-scheduler").await.unwrap();
    lease.spec.and_then(|s| s.holder_identity)
}

#[tokio::test]
async fn one_leader_then_hand_over_then_take_over() {
    let env = TestEnv::start(Options::default().controller_manager(false).kwok(false)).await.unwrap();
    let mut a = LeaderElector::new(env.client(), config("a"));
    let mut b = LeaderElector::new(env.client(), config("b"));

    assert!(a.try_acquire_or_renew().await.unwrap(), "first candidate creates the lease");
    assert!(!b.try_acquire_or_renew().await.unwrap(), "second waits");
    assert!(a.try_acquire_or_renew().await.unwrap(), "holder renews");
    assert!(!b.try_acquire_or_renew().await.unwrap(), "a renewed lease is not taken");
    assert_eq!(holder(&env).await.as_deref(), Some("a"));

    // Release: b takes over without waiting for expiry.
    a.release().await;
    assert!(!*a.watch().borrow());
    assert!(b.try_acquire_or_renew().await.unwrap(), "released lease is taken at once");
    assert_eq!(holder(&env).await.as_deref(), Some("b"));

    // b stops renewing (crashed): a takes over only after a full lease duration.
    assert!(!a.try_acquire_or_renew().await.unwrap());
    let started = tokio::time::Instant::now();
    let took_over = loop {
        if a.try_acquire_or_renew().await.unwrap() {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "a never took over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Expiry counts from a's own first sight of b's record, a little before `started`
    // (more under load), so allow slack; taking over early would show as ~0.
    assert!(took_over >= Duration::from_millis(1500), "took over too early: {took_over:?}");
    assert_eq!(holder(&env).await.as_deref(), Some("a"));
    let transitions = Api::<Lease>::namespaced(env.client(), "default")
        .get("phalanx-scheduler")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.lease_transitions);
    assert_eq!(transitions, Some(2));
}

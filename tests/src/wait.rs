//! Waiting on conditions with a deadline, instead of sleeping.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use kube::runtime::wait::{Condition, await_condition};
use kube::{Api, Resource};
use serde_json::Value;

/// Waits until `cond` holds for the object `name` in `api`, watching it (no polling).
/// Panics with a message naming the object and the last state seen when `timeout` passes.
pub async fn until<K>(api: &Api<K>, name: &str, timeout: Duration, what: &str, cond: impl Condition<K>) -> K
where
    K: Resource + Clone + Debug + Send + serde::de::DeserializeOwned + 'static,
{
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, cond)).await {
        Ok(Ok(Some(obj))) => obj,
        Ok(Ok(None)) => panic!("{name}: deleted while waiting for {what}"),
        Ok(Err(e)) => panic!("{name}: watch failed while waiting for {what}: {e}"),
        Err(_) => {
            let last = api.get_opt(name).await.ok().flatten();
            panic!("{name}: not {what} after {timeout:?}; last seen: {last:#?}")
        }
    }
}

/// Polls `probe` every 100 ms until it returns `Some`, for state that no single watch
/// covers (e.g. a list). Panics after `timeout`, naming `what`.
pub async fn poll<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads a JSON pointer out of any serialisable object (handy in conditions).
pub fn field<T: serde::Serialize>(obj: &T, pointer: &str) -> Option<Value> {
    serde_json::to_value(obj).ok()?.pointer(pointer).cloned()
}

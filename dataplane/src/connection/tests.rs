use tokio::sync::Semaphore;

use super::*;
use crate::registry::Registry;

#[tokio::test]
async fn a_panicking_connection_is_contained_counted_and_releases_its_slot() {
    let metrics = Arc::new(Metrics::new());
    let registry = Arc::new(Registry::default());
    let limit = Arc::new(Semaphore::new(1));
    let permit = Arc::clone(&limit).try_acquire_owned().expect("a permit");
    let control = Arc::new(ConnControl::new(
        "r".into(),
        KeyHash(1),
        Role::Edge("s".into()),
    ));
    let guard = registry.register(control);
    let doomed = tokio::spawn(contained(
        async move {
            let _held = (guard, permit);
            panic!("a bug in one connection");
        },
        Arc::clone(&metrics),
    ));
    doomed.await.expect("the panic does not escape the task");
    assert!(registry.is_empty(), "the registry entry was released");
    assert_eq!(
        limit.available_permits(),
        1,
        "the connection-limit permit was released"
    );
    assert!(
        metrics
            .render()
            .contains("ringway_connection_failures_total{kind=\"panic\"} 1"),
        "{}",
        metrics.render()
    );
    // The process goes on: other connections' tasks still run.
    let fine = tokio::spawn(contained(async {}, Arc::clone(&metrics)));
    fine.await.expect("runs");
}

#[test]
fn a_connections_task_holds_its_state_once() {
    // Every open connection is one spawned task of this type, and the
    // allocator rounds it up to a size class: an `async fn` wrapper held
    // the task twice (1,424 bytes in a release build instead of 728).
    let spawned =
        std::mem::size_of::<tracing::instrument::Instrumented<Contained<ConnectionTask>>>();
    let task = std::mem::size_of::<ConnectionTask>();
    assert!(
        spawned <= task + 64,
        "the spawned future is {spawned} bytes for a {task}-byte task"
    );
}

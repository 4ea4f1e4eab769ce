//! One service per data directory, for embedders too (issue part 7): `Service::start` takes the
//! data directory's lock before it opens the store, and releases it only when shutdown is done.

use nanoclaw_actors::testing::{FakeRuntime, MemoryChannel};
use nanoclaw_actors::{Service, ServiceConfig, StartError};
use std::sync::Arc;
use std::time::Duration;

fn idle_runtime() -> Arc<FakeRuntime> {
    Arc::new(FakeRuntime::new(Arc::new(|_, cancel| {
        Box::pin(async move {
            cancel.cancelled().await;
            0
        })
    })))
}

async fn start(config: &ServiceConfig) -> Result<Service, StartError> {
    Service::start(config.clone(), idle_runtime(), vec![Arc::new(MemoryChannel::new("mem"))]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_service_on_one_data_dir_is_refused_until_the_first_has_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServiceConfig::new(dir.path().join("data"), "lock-test");
    let first = start(&config).await.unwrap();
    let lock_file = config.data_dir.join(nanoclaw_actors::disk::LOCK_FILE);
    assert_eq!(std::fs::read_to_string(&lock_file).unwrap().trim(), std::process::id().to_string());

    let Err(e) = start(&config).await else { panic!("a second service started on a locked data dir") };
    assert!(
        matches!(&e, StartError::Locked { data_dir, pid: Some(p) } if *data_dir == config.data_dir && *p == std::process::id()),
        "{e:?}"
    );
    let line = e.to_string();
    assert_eq!(
        line,
        format!(
            "data directory {} is in use by another nanoclaw service (pid {})",
            config.data_dir.display(),
            std::process::id()
        )
    );
    // The refused start touched nothing: the first service still runs.
    assert!(first.is_running());

    first.shutdown(Duration::from_secs(20)).await;
    assert_eq!(std::fs::read_to_string(&lock_file).unwrap(), "", "the PID is cleared at release");
    let second = start(&config).await.expect("the lock is released after shutdown");
    second.shutdown(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_for_another_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let lock = Service::lock_data_dir(&dir.path().join("a")).await.unwrap();
    let config = ServiceConfig::new(dir.path().join("b"), "lock-test");
    let Err(e) =
        Service::start_with_lock(lock, config, idle_runtime(), vec![Arc::new(MemoryChannel::new("mem"))])
            .await
    else {
        panic!("started with another directory's lock")
    };
    assert!(matches!(e, StartError::DataDir { .. }), "{e:?}");
}

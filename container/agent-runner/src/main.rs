//! `nanoclaw-agent`: the agent runner binary inside every container. Configuration comes from
//! the environment the host sets (`NANOCLAW_*`, see `nanoclaw_protocol::layout`); logs go to
//! stderr. Exit codes: 0 stopped by signal, 1 fatal runtime error, 2 bad configuration.

use nanoclaw_agent::config::RunnerConfig;
use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NANOCLAW_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .init();
    let config = match RunnerConfig::from_lookup(|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nanoclaw-agent: config error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("nanoclaw-agent: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(nanoclaw_agent::runner::run(config)) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("nanoclaw-agent: {e}");
            ExitCode::from(1)
        }
    }
}

//! `nanoclaw`: the host service (`serve`) and its chat client (`chat`).
//!
//! `main` stays thin: parse flags → load config → init logs → run the command. All OS-signal
//! handling is here: the first SIGINT/SIGTERM stops the service in order under a deadline, a
//! second one exits at once (orphaned containers are swept at the next start).

use clap::{Parser, Subcommand};
use nanoclaw::config::{Config, FlagOverrides, LogFormat, RuntimeKind};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "nanoclaw",
    version,
    about = "Personal AI agents in per-session containers, behind your chat channels"
)]
struct Cli {
    /// Configuration file (default: $NANOCLAW_CONFIG, else ./nanoclaw.toml if present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Data directory (database, sessions, sockets).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Container runtime: docker (default) or process (no isolation; development only).
    #[arg(long, global = true, value_enum)]
    runtime: Option<RuntimeKind>,
    /// Agent image repository name.
    #[arg(long, global = true)]
    image: Option<String>,
    /// Log format.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the service in the foreground until SIGINT/SIGTERM.
    Serve {
        /// The default agent's model provider: echo, anthropic, openai or a [providers.<name>]
        /// table of the config file (also NANOCLAW_PROVIDER, agent.provider).
        #[arg(long)]
        provider: Option<String>,
    },
    /// Chat with the default agent (starts a service for its own duration if none is running).
    Chat {
        /// The default agent's model provider when this command starts the service (see `serve`).
        #[arg(long)]
        provider: Option<String>,
        /// Send this one message, print the replies, exit.
        #[arg(short = 'm', long = "message")]
        message: Option<String>,
        /// Seconds a one-turn chat waits for the agent (and any chat for a starting service's socket).
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// The chat to write in (default: `local`, your own DM with the service). The CLI
        /// channel simulates a chat platform: any name is a chat.
        #[arg(long)]
        chat: Option<String>,
        /// Write as this sender (a handle; the user is `cli:<handle>`; default: you, the owner).
        #[arg(long = "as", value_name = "USER")]
        sender: Option<String>,
        /// Write in this thread of the chat.
        #[arg(long)]
        thread: Option<String>,
        /// Mention the bot (a DM always counts as a mention).
        #[arg(long)]
        mention: bool,
        /// The chat is a group chat (default: a DM).
        #[arg(long)]
        group: bool,
    },
    /// Inspect sessions, and release a quarantined or paused one.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
}

#[derive(Subcommand, Debug)]
enum SessionsCommand {
    /// List open sessions with their status (active, quarantined, paused) and reason.
    List,
    /// Release a quarantined or paused session after its files were fixed or reset.
    Release {
        /// The session id (see `nanoclaw sessions list`).
        session_id: String,
    },
}

fn init_logs(config: &Config, quiet_default: bool) {
    use tracing_subscriber::{EnvFilter, fmt, prelude::*};
    let level = if quiet_default && std::env::var("NANOCLAW_LOG_LEVEL").is_err() {
        "warn"
    } else {
        config.log_level.as_str()
    };
    let filter = EnvFilter::new(format!("{level},bollard=warn,hyper=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    match config.log_format {
        LogFormat::Text => {
            use std::io::IsTerminal;
            // Colour codes only for a person at a terminal, never in log files.
            registry
                .with(fmt::layer().with_ansi(std::io::stderr().is_terminal()).with_writer(std::io::stderr))
                .init()
        }
        LogFormat::Json => {
            registry.with(fmt::layer().json().flatten_event(true).with_writer(std::io::stderr)).init()
        }
    }
}

async fn serve(config: Config) -> i32 {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        eprintln!("nanoclaw: cannot install signal handlers");
        return 1;
    };
    let mut service = match nanoclaw::daemon::start(&config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("nanoclaw: {e}");
            return 1;
        }
    };
    tracing::info!(socket = %nanoclaw::daemon::cli_socket(&config).display(), runtime = service.context().runtime.name(), "serving");
    let crashed = tokio::select! {
        _ = term.recv() => false,
        _ = int.recv() => false,
        _ = service.stopped() => true,
    };
    if crashed {
        eprintln!("nanoclaw: the supervisor stopped after repeated failures");
        return 1;
    }
    tracing::info!("stopping (a second signal forces)");
    tokio::select! {
        _ = service.shutdown(Duration::from_secs(30)) => 0,
        _ = term.recv() => 130,
        _ = int.recv() => 130,
    }
}

/// Resolves on the first SIGINT or SIGTERM (never, if the handlers cannot be installed).
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // Bad arguments get one line naming the argument (clap's first line), exit 2.
            let rendered = e.render().to_string();
            let line = rendered.lines().next().unwrap_or("invalid arguments").trim_start_matches("error: ");
            eprintln!("nanoclaw: {line} (see --help)");
            return ExitCode::from(2);
        }
    };
    let provider = match &cli.command {
        Command::Serve { provider } | Command::Chat { provider, .. } => provider.clone(),
        Command::Sessions { .. } => None,
    };
    let flags = FlagOverrides {
        provider,
        config: cli.config,
        data_dir: cli.data_dir,
        runtime: cli.runtime,
        image: cli.image,
        log_format: cli.log_format,
    };
    let config = match Config::load(&flags, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nanoclaw: {e}");
            return ExitCode::from(1);
        }
    };
    init_logs(&config, !matches!(cli.command, Command::Serve { .. }));
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("nanoclaw: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Serve { .. } => serve(config).await,
            Command::Chat { message, timeout, chat, sender, thread, mention, group, .. } => {
                let address = nanoclaw::chat::Address { chat, thread, sender, mention, is_group: group };
                let options =
                    nanoclaw::chat::ChatOptions { message, timeout: Duration::from_secs(timeout), address };
                nanoclaw::chat::run(&config, options, stop_signal()).await
            }
            Command::Sessions { command: SessionsCommand::List } => {
                nanoclaw::admin::list(&config.data_dir).await
            }
            Command::Sessions { command: SessionsCommand::Release { session_id } } => {
                nanoclaw::admin::release(&config.data_dir, &session_id).await
            }
        }
    });
    // Containers are stopped by now; do not wait for stray blocking tasks.
    runtime.shutdown_timeout(Duration::from_secs(1));
    ExitCode::from(code.clamp(0, 255) as u8)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_valid() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}

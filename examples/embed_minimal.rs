//! Embedding the nanoclaw supervisor in another program.
//!
//! Starts the supervisor tree with a custom in-process channel adapter (`AppChannel`), wires that
//! channel's one chat to the default agent group, sends one message through it and prints the
//! agent's reply, then stops everything in order.
//!
//! ```text
//! cargo run --example embed_minimal                       # agents in Docker containers
//! NANOCLAW_RUNTIME=process cargo run --example embed_minimal   # agents as host processes (dev only)
//! ```
//!
//! Exit code 0 when the reply arrived; 1 otherwise.

use async_trait::async_trait;
use nanoclaw::config::{Config, FlagOverrides};
use nanoclaw_actors::ports::channel::{
    AdapterGuard, ChannelAdapter, ChannelError, DeliveryError, InboundEvent, InboundSink, OutboundMessage,
};
use nanoclaw_actors::store::{self, MAIN_AGENT_GROUP_ID};
use nanoclaw_actors::{Service, ServiceConfig};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// A channel adapter living inside the host program: messages come from `send`, replies go to
/// an mpsc receiver.
struct AppChannel {
    sink: Mutex<Option<InboundSink>>,
    replies: mpsc::UnboundedSender<String>,
}

#[async_trait]
impl ChannelAdapter for AppChannel {
    fn channel_type(&self) -> &str {
        "app"
    }

    fn supports_threads(&self) -> bool {
        false
    }

    async fn start(&self, inbound: InboundSink) -> Result<AdapterGuard, ChannelError> {
        // No task, socket or connection per run: each start replaces the sink, so there is
        // nothing for the guard to release.
        *self.sink.lock() = Some(inbound);
        Ok(AdapterGuard::none())
    }

    async fn stop(&self) {
        self.sink.lock().take();
    }

    async fn deliver(&self, message: &OutboundMessage) -> Result<Option<String>, DeliveryError> {
        self.replies.send(message.text.clone()).map_err(|_| DeliveryError::rejected("app closed"))?;
        Ok(None)
    }
}

async fn run() -> Result<String, String> {
    // The host program's own configuration: the same file/env/flag rules as `nanoclaw`.
    let config =
        Config::load(&FlagOverrides::default(), |k| std::env::var(k).ok()).map_err(|e| e.to_string())?;
    let data_dir =
        tempfile::Builder::new().prefix("nc-embed").tempdir_in("/tmp").map_err(|e| e.to_string())?;
    let (runtime, owner) = nanoclaw::runtime::from_config(&config).await?;
    let mut service_config =
        ServiceConfig::new(data_dir.path(), nanoclaw::daemon::install_id(data_dir.path()));
    service_config.container_owner = owner;

    let (replies_tx, mut replies) = mpsc::unbounded_channel();
    let channel = Arc::new(AppChannel { sink: Mutex::new(None), replies: replies_tx });
    let service =
        Service::start(service_config, runtime, vec![channel.clone()]).await.map_err(|e| e.to_string())?;

    // Wire the app's chat to the default agent group: a messaging group open to anyone (the app
    // is its only user), and a wiring that engages on every message. `create_wiring` also gives
    // the agent the chat as a destination (named after the chat: `app`), so it may answer there.
    service
        .store()
        .call(|c| {
            let chat = store::create_messaging_group(
                c,
                "app",
                "main-window",
                Some("app"),
                false,
                store::UnknownSenderPolicy::Public,
            )?;
            store::create_wiring(
                c,
                &store::NewWiring {
                    messaging_group_id: chat.id,
                    agent_group_id: MAIN_AGENT_GROUP_ID.into(),
                    session_mode: store::SessionMode::Shared,
                    engage_mode: store::EngageMode::Pattern,
                    engage_pattern: Some(".".into()),
                    sender_scope: store::SenderScope::All,
                    ignored_message_policy: store::IgnoredPolicy::Drop,
                    priority: 0,
                },
            )
        })
        .await
        .map_err(|e| e.to_string())?;

    // Wait for the channel actor to start the adapter, then send one message through it.
    let sink = loop {
        if let Some(s) = channel.sink.lock().clone() {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let ack = sink
        .submit(InboundEvent {
            channel_type: "app".into(),
            platform_id: "main-window".into(),
            thread_id: None,
            platform_message_id: "app-msg-1".into(),
            sender_id: Some("embedder".into()),
            sender_name: Some("Embedder".into()),
            text: "hello from the host program".into(),
            is_mention: true,
            is_group: false,
            chat_name: None,
        })
        .await
        .map_err(|e| e.to_string())?;
    eprintln!("committed as {}", ack.ledger_id);

    let reply = tokio::time::timeout(Duration::from_secs(60), replies.recv()).await;
    service.shutdown(Duration::from_secs(30)).await;
    match reply {
        Ok(Some(text)) => Ok(text),
        _ => Err("no reply within 60 s".into()),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(reply) => {
            println!("{reply}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("embed_minimal: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

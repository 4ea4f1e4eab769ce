//! The `ProviderGateway` port: model providers and the per-session credential proxy.
//!
//! The supervisor tree does not speak HTTP to providers: the `nanoclaw` crate implements this
//! port with its proxy (hyper on the session's `proxy.sock`, reqwest with rustls upstream), so
//! neither TLS nor an HTTP client enters this crate (or, through feature unification, the runner).
//! The session actor asks the gateway, before each container spawn, to [`resolve`] the session's
//! provider into the [`RunnerProvider`] it writes to `runner.json` (no secret in it), and to
//! [`open`] the proxy on the session's socket; the returned [`ProxyGuard`] lives in the actor's
//! state, and dropping it stops the listener and every connection and removes the socket file.
//!
//! [`EchoOnlyGateway`] is the default: only the offline `echo` provider, no socket.
//!
//! [`resolve`]: ProviderGateway::resolve
//! [`open`]: ProviderGateway::open

use crate::store::Store;
use async_trait::async_trait;
use nanoclaw_protocol::settings::RunnerProvider;
use std::path::PathBuf;
use std::sync::Arc;

/// What the proxy of one session serves: whose tokens it counts and where it may fetch.
#[derive(Clone)]
pub struct ProxyScope {
    /// The session (for logs).
    pub session_id: String,
    /// Its agent group (token usage and budget are per group).
    pub agent_group_id: String,
    /// The session's provider: the only `/<provider>/…` prefix the proxy forwards.
    pub provider: String,
    /// Hosts `web_fetch` may reach (`container_configs.egress_allow`): exact host names, or
    /// `*.suffix`.
    pub egress_allow: Vec<String>,
    /// The socket to listen on (`<host folder>/proxy.sock`).
    pub socket: PathBuf,
    /// The central store (token usage, budget, owner-notice rate limits).
    pub store: Store,
    /// Called for what the session's owner should hear about (outside the request path; must
    /// not block).
    pub on_event: Arc<dyn Fn(ProxyEvent) + Send + Sync>,
}

impl std::fmt::Debug for ProxyScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyScope")
            .field("session_id", &self.session_id)
            .field("agent_group_id", &self.agent_group_id)
            .field("provider", &self.provider)
            .field("egress_allow", &self.egress_allow)
            .field("socket", &self.socket)
            .finish()
    }
}

/// Something the proxy refused or met that the owner may need to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyEvent {
    /// The group's daily token budget is spent; a call was refused.
    BudgetExceeded {
        /// Tokens used today.
        used: u64,
        /// The budget (`providers.daily_token_budget`).
        budget: u64,
    },
    /// The provider answered 401/403: the key is wrong or revoked.
    KeyRefused {
        /// Provider name.
        provider: String,
        /// The variable the key came from.
        env: String,
        /// The upstream status.
        status: u16,
    },
    /// A path or host was refused (already logged).
    Refused {
        /// What was refused (`POST /x/admin`, `web_fetch evil.example`).
        what: String,
    },
}

/// Why a provider cannot be used or its proxy not opened. Display is one line naming the
/// config key to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// No provider of that name is configured.
    #[error("providers.{name}: not configured (known: {known})")]
    UnknownProvider {
        /// The name asked for.
        name: String,
        /// The configured names, comma-separated.
        known: String,
    },
    /// The provider's key variable is not set on the host.
    #[error("providers.{name}.api_key_env: {env} is not set")]
    KeyUnset {
        /// Provider name.
        name: String,
        /// The variable.
        env: String,
    },
    /// Another setting of the provider is unusable (e.g. a `base_url` that does not parse).
    #[error("{key}: {message}")]
    Misconfigured {
        /// The config key (`providers.local.base_url`).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The proxy socket could not be bound.
    #[error("proxy socket {path}: {message}")]
    Bind {
        /// Socket path.
        path: String,
        /// The OS error.
        message: String,
    },
}

/// Keeps one session's proxy alive. Dropping it stops the listener and every connection task
/// and removes the socket file (a drop guard, so no exit path of the session actor leaks it).
#[must_use = "dropping the guard stops the proxy"]
pub struct ProxyGuard(#[allow(dead_code)] Box<dyn Send + Sync>);

impl ProxyGuard {
    /// Wraps whatever stops the proxy when dropped.
    pub fn new(inner: impl Send + Sync + 'static) -> Self {
        Self(Box::new(inner))
    }

    /// A guard with nothing to stop (no socket was bound).
    pub fn none() -> Self {
        Self(Box::new(()))
    }
}

impl std::fmt::Debug for ProxyGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProxyGuard")
    }
}

/// Model providers and the credential proxy, as the supervisor tree sees them.
#[async_trait]
pub trait ProviderGateway: Send + Sync + std::fmt::Debug + 'static {
    /// The provider of groups whose container config names none (`agent.provider`, else `echo`).
    fn default_provider(&self) -> &str;

    /// The runner's view of provider `name` (no key). Errors name the config key to fix: an
    /// unknown provider, an unset key variable, an unparsable `base_url`.
    fn resolve(&self, name: &str) -> Result<RunnerProvider, GatewayError>;

    /// Starts serving `scope.socket` for one session (replacing a stale socket file). The proxy
    /// runs until the returned guard is dropped.
    async fn open(&self, scope: ProxyScope) -> Result<ProxyGuard, GatewayError>;
}

/// The built-in gateway: only the offline `echo` provider; opens no socket.
#[derive(Debug, Clone, Copy, Default)]
pub struct EchoOnlyGateway;

#[async_trait]
impl ProviderGateway for EchoOnlyGateway {
    fn default_provider(&self) -> &str {
        "echo"
    }

    fn resolve(&self, name: &str) -> Result<RunnerProvider, GatewayError> {
        if name == "echo" {
            Ok(RunnerProvider::echo())
        } else {
            Err(GatewayError::UnknownProvider { name: name.into(), known: "echo".into() })
        }
    }

    async fn open(&self, _scope: ProxyScope) -> Result<ProxyGuard, GatewayError> {
        Ok(ProxyGuard::none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_only_resolves_echo() {
        let g = EchoOnlyGateway;
        assert_eq!(g.default_provider(), "echo");
        assert_eq!(g.resolve("echo").unwrap(), RunnerProvider::echo());
        let e = g.resolve("anthropic").unwrap_err().to_string();
        assert_eq!(e, "providers.anthropic: not configured (known: echo)");
    }
}

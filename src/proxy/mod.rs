//! The credential proxy: the host side of every model call and `web_fetch` (issue 6 part 4).
//!
//! Containers have no network. Each session gets an HTTP/1.1 listener on `proxy.sock` in its
//! host folder ([`ProxyGateway::open`], kept alive by the session actor's [`ProxyGuard`]); the
//! runner sends `/<provider>/<api path>` there, and the proxy
//!
//! - forwards only [`proxy::allowed`] paths of the session's own provider (403 otherwise, logged);
//! - drops every request header but a short allowlist (so `authorization`, `x-api-key`,
//!   `cookie`, `proxy-*`, `host` … never pass) and injects the host's key (`x-api-key` for
//!   `anthropic`, `authorization: Bearer` for `openai`), read once at start into a
//!   [`SecretString`];
//! - refuses calls once the agent group's tokens of the day reach `providers.daily_token_budget`
//!   (429, the owner told at most once a day);
//! - streams the answer back chunk by chunk while a tap counts the `usage` tokens, recorded per
//!   (agent group, day, provider) when the stream ends;
//! - replaces the body of a 401/403 from the provider (it may echo the key) with "the API key in
//!   <ENV> was refused", and tells the owner at most once an hour;
//! - serves `POST /_egress` ([`egress`]) for hosts in the group's `egress_allow`.
//!
//! Every response the proxy makes itself carries [`proxy::HEADER_PROXY_ERROR`].

mod egress;
mod server;
mod usage;

use crate::config::{ProviderConfig, ProvidersConfig};
use async_trait::async_trait;
use nanoclaw_actors::ports::provider::{GatewayError, ProviderGateway, ProxyGuard, ProxyScope};
use nanoclaw_protocol::proxy;
use nanoclaw_protocol::settings::{ProviderKind, RunnerProvider};
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub use server::{MAX_CONNECTIONS, REQUEST_HEADER_TIMEOUT};

/// Longest wait for a provider's response head (a model may think long before its first byte).
pub const UPSTREAM_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest silence between two chunks of a streamed answer.
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Deadline of one `web_fetch`.
pub const EGRESS_TIMEOUT: Duration = Duration::from_secs(30);

/// One provider as the proxy knows it: its config, its parsed base URL and its key.
struct Upstream {
    config: ProviderConfig,
    /// The parsed `base_url`, or why it does not parse (named at resolve time).
    base: Result<Option<reqwest::Url>, String>,
    /// The key (`None`: no `api_key_env`), or the variable that is unset.
    key: Result<Option<SecretString>, String>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a SecretString: its Debug prints `[REDACTED]`.
        f.debug_struct("Upstream").field("name", &self.config.name).field("key", &self.key).finish()
    }
}

/// Parses a provider's `base_url`: `http(s)://host[:port][/path]`, no credentials, no query.
fn parse_base_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{text:?} is not an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{text:?} has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not hold credentials (use api_key_env)".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{text:?} must not have a query or fragment"));
    }
    Ok(url)
}

/// The host's [`ProviderGateway`]: the configured providers, their keys (read once, at
/// construction) and the HTTP client that reaches them.
pub struct ProxyGateway {
    inner: Arc<Shared>,
}

/// What every session's proxy shares.
struct Shared {
    providers: BTreeMap<String, Upstream>,
    default_provider: String,
    daily_token_budget: Option<u64>,
    /// Client for providers: rustls, no redirects, connect timeout.
    client: reqwest::Client,
}

impl std::fmt::Debug for ProxyGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyGateway")
            .field("providers", &self.inner.providers.keys().collect::<Vec<_>>())
            .field("default_provider", &self.inner.default_provider)
            .finish()
    }
}

impl ProxyGateway {
    /// Builds the gateway from the providers' config and the default provider's name, reading
    /// each provider's key variable once through `get` (the process environment in `main`).
    ///
    /// Errors only when the HTTP client cannot be built (no TLS backend); an unusable provider
    /// is reported by [`ProviderGateway::resolve`] for the groups that use it.
    pub fn new(
        providers: &ProvidersConfig,
        default_provider: &str,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<ProxyGateway, String> {
        let daily_token_budget = providers.daily_token_budget;
        let providers = providers
            .by_name
            .values()
            .map(|p| {
                let base = match &p.base_url {
                    Some(b) => parse_base_url(b).map(Some),
                    None => Ok(None),
                };
                let key = match &p.api_key_env {
                    None => Ok(None),
                    Some(env) => match get(env) {
                        Some(v) if !v.trim().is_empty() => Ok(Some(SecretString::from(v.trim().to_string()))),
                        _ => Err(env.clone()),
                    },
                };
                (p.name.clone(), Upstream { config: p.clone(), base, key })
            })
            .collect();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(ProxyGateway {
            inner: Arc::new(Shared {
                providers,
                default_provider: default_provider.to_string(),
                daily_token_budget,
                client,
            }),
        })
    }

    /// The upstream of `name`, usable (known, base URL parsed, key present), or the one-line error.
    fn usable(&self, name: &str) -> Result<(&Upstream, Option<&reqwest::Url>), GatewayError> {
        self.inner.usable(name)
    }
}

impl Shared {
    fn usable(&self, name: &str) -> Result<(&Upstream, Option<&reqwest::Url>), GatewayError> {
        let up = self.providers.get(name).ok_or_else(|| GatewayError::UnknownProvider {
            name: name.into(),
            known: self.providers.keys().cloned().collect::<Vec<_>>().join(", "),
        })?;
        let base = up.base.as_ref().map_err(|message| GatewayError::Misconfigured {
            key: format!("providers.{name}.base_url"),
            message: message.clone(),
        })?;
        if let Err(env) = &up.key {
            return Err(GatewayError::KeyUnset { name: name.into(), env: env.clone() });
        }
        Ok((up, base.as_ref()))
    }
}

#[async_trait]
impl ProviderGateway for ProxyGateway {
    fn default_provider(&self) -> &str {
        &self.inner.default_provider
    }

    fn resolve(&self, name: &str) -> Result<RunnerProvider, GatewayError> {
        let (up, _) = self.usable(name)?;
        let c = &up.config;
        Ok(RunnerProvider {
            name: c.name.clone(),
            kind: c.kind,
            model: c.model.clone(),
            context_tokens: c.context_tokens,
            max_output_tokens: c.max_output_tokens,
            temperature: c.temperature,
            command: c.command.clone(),
            max_tokens_field: c.max_tokens_field,
        })
    }

    async fn open(&self, scope: ProxyScope) -> Result<ProxyGuard, GatewayError> {
        // Echo and command providers make no HTTP calls, but web_fetch may: always serve.
        server::open(self.inner.clone(), scope)
    }
}

/// Whether `kind` is forwarded over HTTP.
fn is_http(kind: ProviderKind) -> bool {
    matches!(kind, ProviderKind::Openai | ProviderKind::Anthropic)
}

/// A response the proxy makes itself: the [`proxy::ProxyError`] JSON with the proxy header.
fn proxy_error(
    status: u16,
    kind: proxy::ProxyErrorKind,
    message: impl Into<String>,
) -> hyper::Response<server::Body> {
    let body = serde_json::to_vec(&proxy::ProxyError::new(kind, message)).unwrap_or_default();
    hyper::Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(proxy::HEADER_PROXY_ERROR, "1")
        .body(server::full(body))
        .unwrap_or_else(|_| hyper::Response::new(server::full(Vec::new())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_checked() {
        assert!(parse_base_url("https://api.anthropic.com").is_ok());
        assert!(parse_base_url("http://127.0.0.1:8080/v1").is_ok());
        for bad in ["api.anthropic.com", "ftp://x", "http://u:p@x", "http://x/?a=1", "not a url"] {
            assert!(parse_base_url(bad).is_err(), "{bad}");
        }
    }
}

//! The credential proxy's wire contract: how the runner reaches a model provider and the web
//! without a network and without a key.
//!
//! Containers run with `network: none`. For each session the host listens for HTTP/1.1 on
//! [`crate::layout::PROXY_SOCKET`] in the session's host folder (mounted read-only at `/session`, beside
//! `wake.sock`). The runner sends
//!
//! - provider requests to `/<provider>/<api path>` (the provider's name from
//!   [`crate::settings::RunnerProvider::name`]); the host forwards them to that provider's
//!   `base_url` joined with `<api path>`, strips every credential header the container sent,
//!   injects the key from its own config, and streams the answer back unbuffered. Only the paths
//!   [`allowed`] names pass; anything else is answered 403 by the host;
//! - `web_fetch` requests as a JSON [`EgressRequest`] to `POST` [`EGRESS_PATH`]; the host fetches
//!   the URL only when its host is in the agent group's `egress_allow` list.
//!
//! Every response the proxy makes itself (a refusal, a budget, an unreachable provider) carries
//! the header [`HEADER_PROXY_ERROR`] and a JSON [`ProxyError`] body, so the runner can tell it from
//! the provider's own errors and show its message to the user as is.

use crate::settings::ProviderKind;
use serde::{Deserialize, Serialize};

/// The `Host` (authority) of every request to the proxy; it is not resolved, the socket is the
/// address.
pub const AUTHORITY: &str = "nanoclaw-proxy";

/// Path of the `web_fetch` endpoint.
pub const EGRESS_PATH: &str = "/_egress";

/// Largest request body the proxy forwards, and largest response body the runner accepts from a
/// provider, in bytes.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Largest body a `web_fetch` returns to the runner (longer ones are cut and marked truncated).
pub const EGRESS_MAX_BODY_BYTES: usize = 1024 * 1024;

/// Header set (to `1`) on every response the proxy makes itself.
pub const HEADER_PROXY_ERROR: &str = "x-nanoclaw-proxy";

/// True when `method path` (the part after `/<provider>`, without a query string) is an API call
/// the runner may make to a provider of `kind`. Paths are relative to the provider's `base_url`:
/// an `openai` base URL ends in `/v1` (`https://api.openai.com/v1`, `http://127.0.0.1:8080/v1`),
/// an `anthropic` one does not (`https://api.anthropic.com`).
pub fn allowed(kind: ProviderKind, method: &str, path: &str) -> bool {
    let path = path.trim_start_matches('/');
    match (kind, method) {
        (ProviderKind::Openai, "POST") => path == "chat/completions",
        (ProviderKind::Openai, "GET") => path == "models",
        (ProviderKind::Anthropic, "POST") => path == "v1/messages" || path == "v1/messages/count_tokens",
        (ProviderKind::Anthropic, "GET") => path == "v1/models",
        _ => false,
    }
}

/// The body of a response the proxy makes itself: `{"error": {"type": …, "message": …}}`, the
/// shape both provider APIs use for their errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyError {
    /// The error.
    pub error: ProxyErrorBody,
}

/// See [`ProxyError`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyErrorBody {
    /// What kind of refusal or failure.
    #[serde(rename = "type")]
    pub kind: ProxyErrorKind,
    /// One line for the user, naming the setting to change where there is one.
    pub message: String,
}

impl ProxyError {
    /// A proxy error of `kind` with `message`.
    pub fn new(kind: ProxyErrorKind, message: impl Into<String>) -> Self {
        Self { error: ProxyErrorBody { kind, message: message.into() } }
    }
}

/// Why the proxy answered itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyErrorKind {
    /// The path is not an API path of the provider (403).
    PathNotAllowed,
    /// No provider of that name is configured for this session (404).
    UnknownProvider,
    /// The provider's config is unusable (unset key variable, bad `base_url`) (503).
    ProviderMisconfigured,
    /// The agent group's daily token budget is spent (429).
    BudgetExceeded,
    /// The provider refused the key (401/403 from upstream, body replaced: it may echo the key).
    KeyRefused,
    /// `web_fetch` to a host outside `egress_allow`, or a method/URL the proxy refuses (403).
    EgressRefused,
    /// The provider or the fetched host could not be reached (502).
    UpstreamUnreachable,
    /// A body over [`MAX_BODY_BYTES`] (413).
    TooLarge,
}

/// A `web_fetch` request (`POST /_egress`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressRequest {
    /// `http://` or `https://` URL.
    pub url: String,
    /// `GET` (default) or `POST`.
    #[serde(default)]
    pub method: EgressMethod,
    /// Body of a `POST`.
    #[serde(default)]
    pub body: Option<String>,
}

/// Method of a `web_fetch`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EgressMethod {
    /// `GET`.
    #[default]
    Get,
    /// `POST`.
    Post,
}

/// The answer to a `web_fetch` (status 200 from the proxy; `status` is the fetched server's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressResponse {
    /// HTTP status of the fetched URL.
    pub status: u16,
    /// Its `content-type`, if any.
    pub content_type: Option<String>,
    /// The body as text (lossy UTF-8), at most [`EGRESS_MAX_BODY_BYTES`].
    pub body: String,
    /// The body was cut.
    pub truncated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_api_paths_of_the_kind_are_allowed() {
        assert!(allowed(ProviderKind::Openai, "POST", "/chat/completions"));
        assert!(allowed(ProviderKind::Anthropic, "POST", "v1/messages"));
        for (kind, method, path) in [
            (ProviderKind::Openai, "POST", "/v1/messages"),
            (ProviderKind::Openai, "DELETE", "/models"),
            (ProviderKind::Openai, "POST", "/files"),
            (ProviderKind::Anthropic, "POST", "/v1/messages/../../admin"),
            (ProviderKind::Anthropic, "POST", "/v1/organizations/keys"),
            (ProviderKind::Echo, "POST", "/chat/completions"),
            (ProviderKind::Command, "GET", "/models"),
        ] {
            assert!(!allowed(kind, method, path), "{kind:?} {method} {path}");
        }
    }

    #[test]
    fn proxy_errors_have_the_providers_shape() {
        let e = ProxyError::new(ProxyErrorKind::BudgetExceeded, "daily token budget of 1000 spent");
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["error"]["type"], "budget_exceeded");
        let req: EgressRequest = serde_json::from_str(r#"{"url":"https://example.org"}"#).unwrap();
        assert_eq!(req.method, EgressMethod::Get);
        assert!(serde_json::from_str::<EgressRequest>(r#"{"url":"x","headers":{}}"#).is_err());
    }
}

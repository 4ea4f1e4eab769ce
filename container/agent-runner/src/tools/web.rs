//! `web_fetch`: an HTTP(S) request made by the host on the agent's behalf.
//!
//! The container has no network. The runner sends the request as JSON
//! ([`proxy::EgressRequest`]) to the credential proxy's [`proxy::EGRESS_PATH`]; the host fetches
//! the URL only when its host is in the agent group's `container_configs.egress_allow` (empty by
//! default: every fetch is refused with a message naming that setting), to internal addresses
//! only when listed by IP, within 30 s, and returns at most 1 MiB of body. The runner checks the arguments
//! first (a bad one comes back naming the field, nothing is sent) and gives the model at most
//! [`MAX_RESULT_BYTES`] of the body.

use super::{Tool, ToolContext, ToolError, ToolResult, parse_args, schema_of};
use crate::model::ToolSpec;
use crate::model::http::{Deadlines, ProxyClient};
use async_trait::async_trait;
use bytes::Bytes;
use nanoclaw_protocol::proxy::{self, EgressMethod, EgressRequest, EgressResponse, ProxyError};
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

/// Most body bytes given to the model (the rest is cut, and the cut is said).
pub const MAX_RESULT_BYTES: usize = 64 * 1024;
/// Largest `body` of a `POST`.
pub const MAX_REQUEST_BODY_BYTES: usize = 256 * 1024;
/// Longest URL.
pub const MAX_URL_BYTES: usize = 2048;
/// How long the call may take: the host's own 30 s deadline for the fetch, plus the way back.
pub const TIMEOUT: Duration = Duration::from_secs(45);

/// `web_fetch {url, method?, body?}` through the host's proxy.
#[derive(Debug)]
pub struct WebFetch {
    client: ProxyClient,
}

impl WebFetch {
    /// The tool, sending through the proxy socket at `proxy_socket`.
    pub fn new(proxy_socket: &Path) -> Self {
        let deadlines = Deadlines { first_byte: TIMEOUT, idle: TIMEOUT, ..Deadlines::default() };
        Self { client: ProxyClient::with_deadlines(proxy_socket, "web_fetch", deadlines) }
    }
}

/// Method of a `web_fetch`.
#[derive(Debug, Clone, Copy, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum WebMethod {
    /// `GET` (the default).
    #[default]
    Get,
    /// `POST` (with `body`).
    Post,
}

/// Arguments of `web_fetch`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebFetchArgs {
    /// An `http://` or `https://` URL whose host the admin allowed.
    pub url: String,
    /// `GET` (default) or `POST`.
    #[serde(default)]
    pub method: WebMethod,
    /// The body of a `POST` (text, at most 256 KiB).
    #[serde(default)]
    pub body: Option<String>,
}

/// Checks the arguments (one line naming the field) and builds the proxy request.
fn request_of(a: WebFetchArgs) -> Result<EgressRequest, ToolError> {
    let url = a.url.trim().to_string();
    if url.len() > MAX_URL_BYTES {
        return Err(ToolError(format!("url: longer than {MAX_URL_BYTES} bytes")));
    }
    let lower = url.to_ascii_lowercase();
    if !lower.starts_with("http://") && !lower.starts_with("https://") {
        return Err(ToolError("url: must start with http:// or https://".into()));
    }
    let uri: hyper::Uri = url.parse().map_err(|e| ToolError(format!("url: not a URL ({e})")))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(ToolError("url: has no host".into()));
    }
    let method = match a.method {
        WebMethod::Get if a.body.is_some() => {
            return Err(ToolError("body: only a POST has a body (set method to POST)".into()));
        }
        WebMethod::Get => EgressMethod::Get,
        WebMethod::Post => EgressMethod::Post,
    };
    if a.body.as_ref().is_some_and(|b| b.len() > MAX_REQUEST_BODY_BYTES) {
        return Err(ToolError(format!("body: longer than {} KiB", MAX_REQUEST_BODY_BYTES / 1024)));
    }
    Ok(EgressRequest { url, method, body: a.body })
}

/// The answer as the model reads it: status, type, the body cut to [`MAX_RESULT_BYTES`].
fn result_of(r: EgressResponse) -> String {
    let ctype = r.content_type.as_deref().unwrap_or("no content type");
    let body = crate::model::wire::clip(&r.body, MAX_RESULT_BYTES);
    let cut = r.truncated || body.len() < r.body.len();
    let note = if cut { format!(" (cut to the first {} KiB)", body.len() / 1024) } else { String::new() };
    format!("status {} ({ctype}){note}:\n{body}", r.status)
}

#[async_trait]
impl Tool for WebFetch {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "web_fetch".into(),
            description: "Fetch a web page or call a web API (GET, or POST with a body). Only hosts the admin \
                          allowed for this agent can be reached; the answer is the status and up to 64 KiB of text."
                .into(),
            input_schema: schema_of::<WebFetchArgs>(),
        }
    }

    fn declared_timeout(&self, _args: &serde_json::Value) -> Duration {
        TIMEOUT
    }

    async fn call(&self, args: serde_json::Value, _cx: &mut ToolContext<'_>) -> ToolResult {
        let request = request_of(parse_args(args)?)?;
        let body = Bytes::from(serde_json::to_vec(&request).expect("a request serializes"));
        let answer =
            self.client.post_egress(body).await.map_err(|e| ToolError(format!("not fetched: {e}")))?;
        // The proxy makes every `_egress` answer itself (all carry its header): 200 carries the
        // fetched response, anything else is its refusal.
        let status = answer.status;
        // The proxy's answer is JSON of at most 1 MiB of body, escaped: room for the worst case.
        let text = answer
            .text(4 * proxy::EGRESS_MAX_BODY_BYTES)
            .await
            .map_err(|e| ToolError(format!("not fetched: {e}")))?;
        if status != 200 {
            // A refusal by the host (not allowed, internal address, too slow) names its reason.
            let reason = serde_json::from_str::<ProxyError>(&text)
                .map(|e| e.error.message)
                .unwrap_or_else(|_| format!("the proxy answered {status}"));
            return Err(ToolError(format!("not fetched: {reason}")));
        }
        let response: EgressResponse = serde_json::from_str(&text)
            .map_err(|e| ToolError(format!("not fetched: the proxy's answer is malformed ({e})")))?;
        Ok(result_of(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: serde_json::Value) -> Result<EgressRequest, ToolError> {
        request_of(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn arguments_are_checked_naming_the_field() {
        let ok = args(serde_json::json!({"url": "https://example.org/a?b=1"})).unwrap();
        assert_eq!((ok.method, ok.body), (EgressMethod::Get, None));
        let post =
            args(serde_json::json!({"url": "http://x:8080/", "method": "POST", "body": "{}"})).unwrap();
        assert_eq!(post.method, EgressMethod::Post);
        for (bad, field) in [
            (serde_json::json!({"url": "file:///etc/passwd"}), "url:"),
            (serde_json::json!({"url": "example.org"}), "url:"),
            (serde_json::json!({"url": "http://exa mple.org/"}), "url: not a URL"),
            (serde_json::json!({"url": "http:///path"}), "url:"),
            (serde_json::json!({"url": "x".repeat(3000)}), "url:"),
            (serde_json::json!({"url": "http://x/", "body": "b"}), "body:"),
            (serde_json::json!({"url": "http://x/", "method": "POST", "body": "b".repeat(300_000)}), "body:"),
        ] {
            let e = args(bad.clone()).unwrap_err();
            assert!(e.0.starts_with(field), "{bad}: {e}");
        }
    }

    #[test]
    fn a_long_body_is_cut_and_the_cut_said() {
        let r = EgressResponse {
            status: 200,
            content_type: Some("text/plain".into()),
            body: "é".repeat(MAX_RESULT_BYTES),
            truncated: false,
        };
        let text = result_of(r);
        let head: String = text.chars().take(60).collect();
        assert!(text.starts_with("status 200 (text/plain) (cut to the first 64 KiB):\n"), "{head}");
        assert!(text.len() <= MAX_RESULT_BYTES + 100);
    }
}

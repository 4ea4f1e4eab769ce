//! `POST /_egress`: the `web_fetch` tool's way out, for hosts in the group's `egress_allow`.
//!
//! An entry is an exact host (`example.org`, default port only), a `*.suffix` (any subdomain of
//! `suffix`, not `suffix` itself), or either with `:port`. A name that resolves to a loopback,
//! private, link-local or otherwise internal address is refused unless the entry is that IP
//! literal (so an allowed public name cannot be pointed at the host's own services); the
//! request then goes to exactly the address that was checked. Redirects are followed only on the
//! same host and port (at most 5). The body is cut at [`proxy::EGRESS_MAX_BODY_BYTES`] and marked.
//! The whole fetch has [`super::EGRESS_TIMEOUT`].

use super::server::{Body, Session, read_body};
use super::{EGRESS_TIMEOUT, proxy_error};
use futures_util::StreamExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use nanoclaw_protocol::proxy::{self, EgressMethod, EgressRequest, EgressResponse, ProxyErrorKind};
use std::net::{IpAddr, SocketAddr};

/// Largest `web_fetch` request (the JSON, including a POST body).
const MAX_EGRESS_REQUEST_BYTES: usize = 1024 * 1024;

/// True when `host:port` of a URL matches the `egress_allow` entry `entry`.
pub fn matches(entry: &str, host: &str, port: u16, default_port: bool) -> bool {
    let (pattern, want_port) = match entry.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, p.parse::<u16>().ok()),
        _ => (entry, None),
    };
    let port_ok = match want_port {
        Some(p) => p == port,
        None => default_port,
    };
    let host_ok = match pattern.strip_prefix("*.") {
        Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
        None => host == pattern,
    };
    port_ok && host_ok
}

/// True for addresses a fetch must not reach unless explicitly allowed by IP.
fn internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64 // 100.64/10 (CGNAT)
                || v4.octets()[0] == 0
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link local
                || v6.to_ipv4_mapped().is_some_and(|v4| internal(IpAddr::V4(v4)))
        }
    }
}

fn refuse(session: &Session, what: String, message: String) -> Response<Body> {
    session.refused(format!("web_fetch {what}"));
    proxy_error(403, ProxyErrorKind::EgressRefused, message)
}

/// Serves one `POST /_egress`.
pub(super) async fn handle(session: &Session, req: Request<Incoming>) -> Response<Body> {
    if req.method() != hyper::Method::POST {
        return proxy_error(
            405,
            ProxyErrorKind::PathNotAllowed,
            format!("{} takes POST", proxy::EGRESS_PATH),
        );
    }
    let body = match read_body(req.into_body(), MAX_EGRESS_REQUEST_BYTES).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let request: EgressRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return proxy_error(
                400,
                ProxyErrorKind::EgressRefused,
                format!("web_fetch request is not valid: {e}"),
            );
        }
    };
    let allow = &session.scope.egress_allow;
    if allow.is_empty() {
        return refuse(
            session,
            request.url.chars().take(200).collect(),
            "web_fetch is off: add the host to container_configs.egress_allow".into(),
        );
    }
    let url = match reqwest::Url::parse(&request.url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => u,
        _ => {
            return proxy_error(
                400,
                ProxyErrorKind::EgressRefused,
                "web_fetch needs an http:// or https:// URL with a host",
            );
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        return proxy_error(400, ProxyErrorKind::EgressRefused, "web_fetch URLs must not hold credentials");
    }
    let host =
        url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    let port = url.port_or_known_default().unwrap_or(80);
    let default_port = url.port().is_none();
    let Some(entry) = allow.iter().find(|e| matches(e, &host, port, default_port)) else {
        return refuse(
            session,
            format!("{host}:{port}"),
            format!("web_fetch to {host} refused: it is not in container_configs.egress_allow"),
        );
    };
    // Resolve once, check, and connect to exactly that address.
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout(EGRESS_TIMEOUT, tokio::net::lookup_host((host.as_str(), port))).await {
            Ok(Ok(a)) => a.collect(),
            _ => {
                return proxy_error(
                    502,
                    ProxyErrorKind::UpstreamUnreachable,
                    format!("web_fetch: {host} does not resolve"),
                );
            }
        };
    let literal_allowed = host.parse::<IpAddr>().is_ok() && !entry.starts_with("*.");
    let Some(addr) = addrs.iter().copied().find(|a| literal_allowed || !internal(a.ip())) else {
        return refuse(
            session,
            format!("{host}:{port} (internal address)"),
            format!("web_fetch to {host} refused: it resolves to an internal address"),
        );
    };
    let (same_host, same_port) = (host.clone(), port);
    let policy = reqwest::redirect::Policy::custom(move |attempt| {
        let u = attempt.url();
        let same = u.host_str().is_some_and(|h| h.eq_ignore_ascii_case(&same_host))
            && u.port_or_known_default() == Some(same_port);
        if same && attempt.previous().len() < 5 { attempt.follow() } else { attempt.stop() }
    });
    let mut builder = reqwest::Client::builder().redirect(policy).no_proxy();
    if host.parse::<IpAddr>().is_err() {
        builder = builder.resolve(&host, addr);
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => return proxy_error(502, ProxyErrorKind::UpstreamUnreachable, format!("web_fetch: {e}")),
    };
    let call = match request.method {
        EgressMethod::Get => client.get(url),
        EgressMethod::Post => client.post(url).body(request.body.unwrap_or_default()),
    };
    let fetched = tokio::time::timeout(EGRESS_TIMEOUT, async move {
        let resp = call.send().await?;
        let status = resp.status().as_u16();
        let content_type =
            resp.headers().get(hyper::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
        let mut body = Vec::new();
        let mut truncated = false;
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            let room = proxy::EGRESS_MAX_BODY_BYTES - body.len();
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                truncated = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok::<_, reqwest::Error>(EgressResponse {
            status,
            content_type,
            body: String::from_utf8_lossy(&body).into_owned(),
            truncated,
        })
    })
    .await;
    match fetched {
        Ok(Ok(r)) => Response::builder()
            .status(200)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(proxy::HEADER_PROXY_ERROR, "1")
            .body(super::server::full(serde_json::to_vec(&r).unwrap_or_default()))
            .unwrap_or_else(|_| proxy_error(502, ProxyErrorKind::UpstreamUnreachable, "web_fetch failed")),
        Ok(Err(e)) => proxy_error(
            502,
            ProxyErrorKind::UpstreamUnreachable,
            format!("web_fetch of {host} failed: {}", e.without_url()),
        ),
        Err(_) => proxy_error(
            504,
            ProxyErrorKind::UpstreamUnreachable,
            format!("web_fetch of {host} took over {} s", EGRESS_TIMEOUT.as_secs()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_hosts_and_ports() {
        assert!(matches("example.org", "example.org", 443, true));
        assert!(!matches("example.org", "example.org", 8443, false));
        assert!(!matches("example.org", "evil-example.org", 443, true));
        assert!(matches("*.example.org", "api.example.org", 443, true));
        assert!(!matches("*.example.org", "example.org", 443, true));
        assert!(!matches("*.example.org", "apiexample.org", 443, true));
        assert!(matches("127.0.0.1:8080", "127.0.0.1", 8080, false));
        assert!(!matches("127.0.0.1:8080", "127.0.0.1", 8081, false));
    }

    #[test]
    fn internal_addresses() {
        for ip in
            ["127.0.0.1", "10.1.2.3", "192.168.1.1", "169.254.169.254", "::1", "fd00::1", "::ffff:127.0.0.1"]
        {
            assert!(internal(ip.parse().unwrap()), "{ip}");
        }
        assert!(!internal("93.184.216.34".parse().unwrap()));
    }
}

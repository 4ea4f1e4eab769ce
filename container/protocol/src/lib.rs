//! Everything that crosses the nanoclaw container boundary.
//!
//! The host and the agent runner (one per container) share nothing but two SQLite files per
//! session, the session's folders and a Unix socket used as a wake signal (DESIGN §6). This crate
//! is the single definition of all of it, linked by both sides:
//!
//! - [`schema`]: the `inbound.db` / `outbound.db` schemas and the connection rules
//!   (a rollback journal, fine-grained busy waits, read-only readers, no symlinks);
//! - [`rows`]: the typed rows, enum columns and the seq-parity rule (even = host, odd = container);
//! - [`content`]: the JSON carried in `content` columns, including typed system actions;
//! - [`output`]: the agent output syntax (`<message to="…">`, `<internal>`);
//! - [`validate`]: host-side re-validation of everything the untrusted container writes;
//! - [`wake`]: the wake socket and its one-byte frames;
//! - [`layout`]: paths and environment variables both sides agree on;
//! - [`settings`]: the runner's settings (`runner.json`: provider, tier, tools, MCP servers);
//! - [`proxy`]: the credential proxy's wire contract (provider API paths, `web_fetch`, errors);
//! - [`time`]: the one timestamp format stored in every text time column.
//!
//! The container is untrusted: nothing here assumes a row read from `outbound.db` is well formed.
//! The host reads capped, untyped values and validates each row ([`validate`]).

pub mod content;
pub mod layout;
pub mod output;
pub mod proxy;
pub mod rows;
pub mod schema;
pub mod settings;
pub mod time;
pub mod validate;
pub mod wake;

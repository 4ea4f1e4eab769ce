//! Typed rows of the session DBs and the values of their enum columns.
//!
//! Each enum's `as_str` is the exact text stored in SQLite and checked by the schema's CHECK
//! constraints ([`crate::schema`]); `parse` is the inverse and names the offending value.

use serde::{Deserialize, Serialize};

/// Error for a text value that is not one of an enum column's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{column}: unknown value {value:?} (expected one of {expected})")]
pub struct UnknownValue {
    /// The column (or field) whose value was rejected.
    pub column: &'static str,
    /// The rejected value, truncated to 64 characters.
    pub value: String,
    /// The accepted values, `|`-separated.
    pub expected: &'static str,
}

macro_rules! text_enum {
    ($(#[$m:meta])* $name:ident, $column:literal, { $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The text stored in SQLite.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses the stored text; errors name the column and the value.
            pub fn parse(s: &str) -> Result<Self, UnknownValue> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(UnknownValue {
                        column: $column,
                        value: other.chars().take(64).collect(),
                        expected: concat!($($text, "|"),+),
                    }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(
    /// `messages_in.kind`: what an inbound row carries.
    InboundKind, "messages_in.kind", {
        /// A chat message from a channel (content [`crate::content::ChatContent`]).
        Chat = "chat",
        /// A scheduled task that came due (content [`crate::content::TaskContent`]).
        Task = "task",
        /// A host answer to a system action; never rendered into a prompt.
        System = "system",
        /// A webhook event.
        Webhook = "webhook",
    }
);

text_enum!(
    /// `messages_in.status`, maintained by the host only.
    InboundStatus, "messages_in.status", {
        /// Waiting for (or being processed by) a container.
        Pending = "pending",
        /// Processed: the container acked it `completed`.
        Completed = "completed",
        /// Given up: acked `failed`, or out of tries.
        Failed = "failed",
        /// A paused scheduled task.
        Paused = "paused",
    }
);

text_enum!(
    /// `messages_out.kind`: what an outbound row carries.
    OutboundKind, "messages_out.kind", {
        /// A message for a chat or another agent (content [`crate::content::OutboundContent`]).
        Chat = "chat",
        /// A system action for the host (content [`crate::content::SystemAction`]).
        System = "system",
    }
);

text_enum!(
    /// `processing_ack.status`: the container's claim log.
    AckStatus, "processing_ack.status", {
        /// Claimed by the container of the row's generation; in flight.
        Processing = "processing",
        /// Done; its replies (if any) were committed in the same transaction.
        Completed = "completed",
        /// The container gave up on it (e.g. a non-retryable provider error).
        Failed = "failed",
    }
);

text_enum!(
    /// `delivered.status`: the host's delivery ledger for `messages_out` rows.
    DeliveryStatus, "delivered.status", {
        /// Reserved: a send is (or was) under way. Committed before the send (DESIGN §5 inv. 3).
        Sending = "sending",
        /// The last attempt failed with an error that guarantees nothing was sent; another
        /// attempt is due after a backoff.
        Retrying = "retrying",
        /// The channel accepted it; `platform_message_id` is set when the platform gave one.
        Delivered = "delivered",
        /// Will never be sent: rejected, out of attempts, or interrupted mid-send.
        Failed = "failed",
    }
);

text_enum!(
    /// `destinations.type`: what a destination name points at.
    DestinationType, "destinations.type", {
        /// A chat (messaging group).
        Channel = "channel",
        /// Another agent group.
        Agent = "agent",
    }
);

/// Returns true when `seq` is a valid host (inbound) seq: positive and even.
pub const fn is_inbound_seq(seq: i64) -> bool {
    seq > 0 && seq % 2 == 0
}

/// Returns true when `seq` is a valid container (outbound) seq: positive and odd.
pub const fn is_outbound_seq(seq: i64) -> bool {
    seq > 0 && seq % 2 == 1
}

/// The next even seq after `max_inbound` (the largest seq in `messages_in`, if any).
pub const fn next_inbound_seq(max_inbound: Option<i64>) -> i64 {
    match max_inbound {
        None => 2,
        Some(m) if m < 2 => 2,
        Some(m) => m + 2 - (m % 2),
    }
}

/// The next odd seq after the largest seq of both DBs (`max_any`), so that odd seqs stay above
/// every even one the agent has seen.
pub const fn next_outbound_seq(max_any: Option<i64>) -> i64 {
    match max_any {
        None => 1,
        Some(m) if m < 1 => 1,
        Some(m) => m + 1 + (m % 2),
    }
}

/// One `messages_in` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundRow {
    /// Row id: `<ledger id>:<agent group id>` for routed chat messages, so that routing the same
    /// ledger entry twice is a no-op.
    pub id: String,
    /// Agent-visible message id; even.
    pub seq: i64,
    /// What the row carries.
    pub kind: InboundKind,
    /// When the message was received ([`crate::time::format_ts`]).
    pub timestamp: String,
    /// Host-maintained status.
    pub status: InboundStatus,
    /// Not before this time ([`crate::time::format_ts`]); set for retries and tasks.
    pub process_after: Option<String>,
    /// 5-field cron recurrence of a task row.
    pub recurrence: Option<String>,
    /// Series of a recurring task (the first row's id).
    pub series_id: Option<String>,
    /// How many containers died while processing this row.
    pub tries: i64,
    /// 1 wakes the agent; 0 is context accumulated for the next wake.
    pub trigger: bool,
    /// Only a freshly started container's first read may take it.
    pub on_wake: bool,
    /// Reply address: platform chat id.
    pub platform_id: Option<String>,
    /// Reply address: channel type (`cli`, `telegram`, `agent`, …).
    pub channel_type: Option<String>,
    /// Reply address: thread.
    pub thread_id: Option<String>,
    /// JSON content ([`crate::content`]).
    pub content: String,
    /// For agent-to-agent messages: the sending session.
    pub source_session_id: Option<String>,
}

/// One `messages_out` row as the runner writes it. The host never trusts this shape: it reads
/// raw values and validates them ([`crate::validate`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundRow {
    /// Row id chosen by the runner.
    pub id: String,
    /// Agent-visible message id; odd.
    pub seq: i64,
    /// The `messages_in` id this answers, if any.
    pub in_reply_to: Option<String>,
    /// When it was written ([`crate::time::format_ts`]).
    pub timestamp: String,
    /// Not before this time.
    pub deliver_after: Option<String>,
    /// What the row carries.
    pub kind: OutboundKind,
    /// Target chat id (for `chat` rows).
    pub platform_id: Option<String>,
    /// Target channel type (for `chat` rows).
    pub channel_type: Option<String>,
    /// Target thread.
    pub thread_id: Option<String>,
    /// JSON content ([`crate::content`]).
    pub content: String,
}

/// One `destinations` row: a name the agent may address, and where it points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// The name used in `<message to="…">`.
    pub name: String,
    /// Human name shown in the prompt.
    pub display_name: Option<String>,
    /// Chat or agent.
    pub kind: DestinationType,
    /// For chats: channel type.
    pub channel_type: Option<String>,
    /// For chats: platform chat id.
    pub platform_id: Option<String>,
    /// For agents: the agent group id.
    pub agent_group_id: Option<String>,
}

/// The `session_routing` row: where replies go by default.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SessionRouting {
    /// Channel type of the session's chat.
    pub channel_type: Option<String>,
    /// Platform chat id of the session's chat.
    pub platform_id: Option<String>,
    /// Thread of the session, for per-thread sessions.
    pub thread_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_parity_helpers() {
        assert_eq!(next_inbound_seq(None), 2);
        assert_eq!(next_inbound_seq(Some(2)), 4);
        assert_eq!(next_inbound_seq(Some(3)), 4);
        assert_eq!(next_outbound_seq(None), 1);
        assert_eq!(next_outbound_seq(Some(1)), 3);
        assert_eq!(next_outbound_seq(Some(4)), 5);
        for m in 0..50 {
            assert!(is_inbound_seq(next_inbound_seq(Some(m))));
            assert!(next_inbound_seq(Some(m)) > m);
            assert!(is_outbound_seq(next_outbound_seq(Some(m))));
            assert!(next_outbound_seq(Some(m)) > m);
        }
    }

    #[test]
    fn enum_text_round_trips_and_errors_name_column() {
        for k in InboundKind::ALL {
            assert_eq!(InboundKind::parse(k.as_str()).unwrap(), *k);
            let json = serde_json::to_string(k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
        }
        let e = DeliveryStatus::parse("lost").unwrap_err();
        assert_eq!(e.column, "delivered.status");
        assert!(e.to_string().contains("\"lost\""));
    }

    #[test]
    fn rows_round_trip_through_serde() {
        let row = InboundRow {
            id: "m1:main".into(),
            seq: 2,
            kind: InboundKind::Chat,
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            status: InboundStatus::Pending,
            process_after: None,
            recurrence: None,
            series_id: None,
            tries: 0,
            trigger: true,
            on_wake: false,
            platform_id: Some("local".into()),
            channel_type: Some("cli".into()),
            thread_id: None,
            content: r#"{"text":"hi"}"#.into(),
            source_session_id: None,
        };
        let back: InboundRow = serde_json::from_str(&serde_json::to_string(&row).unwrap()).unwrap();
        assert_eq!(back, row);
        let out = OutboundRow {
            id: "o1".into(),
            seq: 3,
            in_reply_to: Some("m1:main".into()),
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            deliver_after: None,
            kind: OutboundKind::Chat,
            platform_id: Some("local".into()),
            channel_type: Some("cli".into()),
            thread_id: None,
            content: r#"{"text":"echo: hi"}"#.into(),
        };
        let back: OutboundRow = serde_json::from_str(&serde_json::to_string(&out).unwrap()).unwrap();
        assert_eq!(back, out);
    }
}

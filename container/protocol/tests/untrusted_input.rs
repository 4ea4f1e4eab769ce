//! Property tests: whatever a compromised container writes, the host-side parsers return a value
//! or an error naming a field — they never panic — and what they accept keeps its invariants.

use nanoclaw_protocol::content::OutboundContent;
use nanoclaw_protocol::output::parse_output;
use nanoclaw_protocol::rows::AckStatus;
use nanoclaw_protocol::rows::is_outbound_seq;
use nanoclaw_protocol::validate::{
    CONTAINER_STATE_COLUMNS, MAX_ID_BYTES, MAX_TEXT_BYTES, MAX_TOOL_NAME_BYTES, MESSAGES_OUT_COLUMNS,
    OutboundBody, Oversize, PROCESSING_ACK_COLUMNS, RawAckRow, RawContainerStateRow, RawOutboundRow,
    check_ack, check_container_state, check_outbound, validate_outbound,
};
use proptest::prelude::*;
use rusqlite::types::Value;

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::Integer),
        any::<f64>().prop_map(Value::Real),
        ".{0,40}".prop_map(Value::Text),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(Value::Blob),
        // Plausible values, so that validation gets past the first fields often.
        Just(Value::Text("out-1".into())),
        Just(Value::Text("chat".into())),
        Just(Value::Text("system".into())),
        Just(Value::Text("cli".into())),
        Just(Value::Text("2026-01-01T00:00:00.000Z".into())),
        (0i64..10).prop_map(|n| Value::Integer(2 * n + 1)),
    ]
}

fn content() -> impl Strategy<Value = Value> {
    prop_oneof![
        value(),
        ".{0,60}".prop_map(|t| Value::Text(serde_json::json!({"type": "text", "text": t}).to_string())),
        ".{0,60}".prop_map(|t| Value::Text(format!(
            r#"{{"action":"request_rebuild","reason":{}}}"#,
            serde_json::json!(t)
        ))),
        ".{0,60}".prop_map(|t| Value::Text(format!(r#"{{"action":"{t}"}}"#))),
    ]
}

/// Sometimes one of `columns` is oversize (as the capped SELECT reports it), usually none.
fn oversize(
    columns: &'static [nanoclaw_protocol::validate::Column],
) -> impl Strategy<Value = Option<Oversize>> {
    prop_oneof![
        3 => Just(None),
        1 => (0..columns.len(), any::<i64>()).prop_map(move |(i, bytes)| Some(Oversize {
            column: columns[i].name,
            bytes,
            max_bytes: columns[i].max_bytes,
        })),
    ]
}

prop_compose! {
    fn raw_row()(rowid in any::<i64>(), id in value(), seq in value(), in_reply_to in value(), timestamp in value(),
                 deliver_after in value(), kind in value(), platform_id in value(), channel_type in value(),
                 thread_id in value(), content in content(), oversize in oversize(&MESSAGES_OUT_COLUMNS))
                -> RawOutboundRow {
        RawOutboundRow { rowid, id, seq, in_reply_to, timestamp, deliver_after, kind, platform_id, channel_type, thread_id, content, oversize }
    }
}

fn status() -> impl Strategy<Value = Value> {
    prop_oneof![value(), prop::sample::select(AckStatus::ALL).prop_map(|s| Value::Text(s.as_str().into()))]
}

prop_compose! {
    fn raw_ack()(rowid in any::<i64>(), message_id in value(), status in status(), status_changed in value(),
                 generation in value(), oversize in oversize(&PROCESSING_ACK_COLUMNS)) -> RawAckRow {
        RawAckRow { rowid, message_id, status, status_changed, generation, oversize }
    }
}

prop_compose! {
    fn raw_state()(rowid in any::<i64>(), generation in value(), current_tool in value(),
                   tool_declared_timeout_ms in value(), oversize in oversize(&CONTAINER_STATE_COLUMNS)) -> RawContainerStateRow {
        RawContainerStateRow { rowid, generation, current_tool, tool_declared_timeout_ms, oversize }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn validation_never_panics_and_accepted_rows_keep_their_invariants(row in raw_row()) {
        let key = row.ledger_key();
        prop_assert!(!key.is_empty() && key.len() <= 140);
        if row.oversize.is_some() {
            let e = check_outbound(&row).unwrap_err();
            prop_assert_eq!(e.error.field.as_str(), row.oversize.unwrap().column);
            prop_assert_eq!(e.key, key.clone());
        }
        match validate_outbound(&row) {
            Err(e) => {
                prop_assert!(e.to_string().starts_with("messages_out."));
                prop_assert!(!e.to_string().contains('\n'));
            }
            Ok(v) => {
                prop_assert!(row.oversize.is_none());
                prop_assert!(is_outbound_seq(v.seq));
                prop_assert!(!v.id.is_empty() && v.id.len() <= 128);
                match v.body {
                    OutboundBody::Chat(OutboundContent::Text { text }) => {
                        prop_assert!(!text.trim().is_empty() && text.len() <= MAX_TEXT_BYTES);
                        prop_assert!(v.target.is_some());
                    }
                    OutboundBody::Chat(OutboundContent::File { files, .. }) => {
                        prop_assert!(!files.is_empty() && v.target.is_some());
                        for f in files {
                            prop_assert_eq!(f.path, format!("outbox/{}/{}", v.id, f.name));
                        }
                    }
                    OutboundBody::Chat(_) => prop_assert!(v.target.is_some()),
                    OutboundBody::System(_) => prop_assert!(v.target.is_none()),
                }
            }
        }
    }

    #[test]
    fn ack_validation_never_panics_and_accepted_acks_keep_their_invariants(row in raw_ack()) {
        match check_ack(&row) {
            Err(r) => {
                prop_assert_eq!(r.rowid, row.rowid);
                prop_assert!(r.error.to_string().starts_with("processing_ack."));
                prop_assert!(!r.to_string().contains('\n'));
                prop_assert!(!r.key.is_empty() && r.key.len() <= 140);
                if let Some(o) = row.oversize {
                    prop_assert_eq!(r.error.field.as_str(), o.column);
                }
            }
            Ok(a) => {
                prop_assert!(row.oversize.is_none());
                prop_assert!(!a.message_id.is_empty() && a.message_id.len() <= MAX_ID_BYTES);
                prop_assert!(a.generation >= 0);
            }
        }
    }

    #[test]
    fn container_state_validation_never_panics(row in raw_state()) {
        match check_container_state(&row) {
            Err(r) => prop_assert!(r.error.to_string().starts_with("container_state.")),
            Ok(s) => {
                prop_assert!(row.oversize.is_none());
                prop_assert!(s.generation >= 0);
                prop_assert!(s.current_tool.is_none_or(|t| !t.is_empty() && t.len() <= MAX_TOOL_NAME_BYTES));
                prop_assert!(s.declared_timeout.is_none_or(|d| !d.is_zero()));
            }
        }
    }

    #[test]
    fn output_parsing_never_panics_and_never_delivers_internal_text(text in "(<message to=\"[a-z]{0,4}\"( reply_to=\"[0-9]{0,3}\")?>|</message>|<internal>|</internal>|[a-z <>\"=/]){0,40}") {
        let parsed = parse_output(&text);
        for block in parsed.messages {
            prop_assert!(!block.text.is_empty());
            prop_assert!(!block.text.contains("<internal>"));
            prop_assert!(!block.to.contains('"'));
        }
    }
}

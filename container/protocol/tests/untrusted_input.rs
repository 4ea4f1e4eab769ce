//! Property tests: whatever a compromised container writes, the host-side parsers return a value
//! or an error naming a field — they never panic — and what they accept keeps its invariants.

use nanoclaw_protocol::content::OutboundContent;
use nanoclaw_protocol::output::parse_output;
use nanoclaw_protocol::rows::is_outbound_seq;
use nanoclaw_protocol::validate::{MAX_TEXT_BYTES, OutboundBody, RawOutboundRow, validate_outbound};
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

prop_compose! {
    fn raw_row()(rowid in any::<i64>(), id in value(), seq in value(), in_reply_to in value(), timestamp in value(),
                 deliver_after in value(), kind in value(), platform_id in value(), channel_type in value(),
                 thread_id in value(), content in content(), len in prop_oneof![value(), (0i64..1_000_000).prop_map(Value::Integer)])
                -> RawOutboundRow {
        RawOutboundRow { rowid, id, seq, in_reply_to, timestamp, deliver_after, kind, platform_id, channel_type, thread_id, content_len: len, content }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn validation_never_panics_and_accepted_rows_keep_their_invariants(row in raw_row()) {
        let key = row.ledger_key();
        prop_assert!(!key.is_empty() && key.len() <= 140);
        match validate_outbound(&row) {
            Err(e) => {
                prop_assert!(e.to_string().starts_with("messages_out."));
                prop_assert!(!e.to_string().contains('\n'));
            }
            Ok(v) => {
                prop_assert!(is_outbound_seq(v.seq));
                prop_assert!(!v.id.is_empty() && v.id.len() <= 128);
                match v.body {
                    OutboundBody::Chat(OutboundContent::Text { text }) => {
                        prop_assert!(!text.trim().is_empty() && text.len() <= MAX_TEXT_BYTES);
                        prop_assert!(v.target.is_some());
                    }
                    OutboundBody::System(_) => prop_assert!(v.target.is_none()),
                }
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

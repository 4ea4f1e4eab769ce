//! The cards of approvals and questions: what the person deciding sees. An approval's card shows
//! the whole stored payload — every argument and environment value of an action, nothing left
//! out — and the first 12 hex digits of its SHA-256, which the execution checks again; a payload
//! too long for a chat message is cut, and the card names `ncl approvals get <id>` for the rest.

use super::callback;
use crate::ports::channel::{ChoiceCard, ChoiceOption};
use crate::store::{Approval, ApprovalKind, ApprovalStatus};

/// The options of a chat's registration card: (label, choice) with choices
/// `connect:<agent group id>`, `new` and `reject`, as stored in the payload.
pub fn channel_options(a: &Approval) -> Vec<(String, String)> {
    let Ok(payload) = a.payload_value() else { return vec![] };
    payload["options"]
        .as_array()
        .map(|o| {
            o.iter()
                .filter_map(|o| Some((o["label"].as_str()?.to_string(), o["choice"].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// The options of a question, as stored in the payload.
pub fn question_options(a: &Approval) -> Vec<String> {
    let Ok(payload) = a.payload_value() else { return vec![] };
    payload["options"]
        .as_array()
        .map(|o| o.iter().filter_map(|o| o.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// The first `limit` characters of `text`, and whether it was cut.
fn cut(text: &str, limit: usize) -> (String, bool) {
    match text.char_indices().nth(limit) {
        Some((i, _)) => (text[..i].to_string(), true),
        None => (text.to_string(), false),
    }
}

/// The card of approval `a`, its body at most `limit` characters.
pub fn render(a: &Approval, limit: usize) -> ChoiceCard {
    let payload = a.payload_value().unwrap_or(serde_json::Value::Null);
    let s = |k: &str| payload[k].as_str().unwrap_or("?").to_string();
    let (title, intro, labels, hint) = match a.kind {
        ApprovalKind::Action => (
            format!("Approval needed: {}", a.action),
            format!(
                "Agent \"{}\" asks to run {}{}.",
                s("agent"),
                a.action,
                match (payload["chat"].as_str(), payload["sender"].as_str()) {
                    (Some(chat), Some(sender)) => format!(" (in chat {chat}, on a message from {sender})"),
                    (Some(chat), None) => format!(" (in chat {chat})"),
                    _ => String::new(),
                }
            ),
            vec!["Approve".to_string(), "Deny".to_string()],
            format!("Reply `approve {id}` or `deny {id}`.", id = a.id),
        ),
        ApprovalKind::Sender => (
            "New sender".to_string(),
            format!(
                "{} ({}) wants to talk to agent \"{}\" in chat {}.",
                payload["sender_name"].as_str().unwrap_or("someone"),
                s("sender"),
                s("agent"),
                s("chat")
            ),
            vec!["Allow".to_string(), "Deny".to_string()],
            format!("Reply `approve {id}` or `deny {id}`.", id = a.id),
        ),
        ApprovalKind::Channel => (
            if payload["is_group"].as_bool() == Some(true) {
                "Bot mentioned in a new chat".to_string()
            } else {
                "New direct message".to_string()
            },
            format!("{} wrote in chat {}, which no agent serves yet.", s("sender"), s("chat")),
            channel_options(a).into_iter().map(|(label, _)| label).collect(),
            format!(
                "Reply `approve {id} <number>` to pick an option, `approve {id} new <name>` to create an agent, \
                 or `deny {id}` to reject the chat.",
                id = a.id
            ),
        ),
        ApprovalKind::Question => (
            s("title"),
            s("question"),
            question_options(a),
            "Reply with the number or the text of an option.".to_string(),
        ),
    };
    let text = if a.kind == ApprovalKind::Question {
        cut(&intro, limit).0
    } else {
        let pretty = serde_json::to_string_pretty(&payload).unwrap_or_else(|_| a.payload.clone());
        let body = format!("{intro}\nRequest {} (hash {}):\n{pretty}", a.id, a.hash_prefix());
        let (mut text, was_cut) = cut(&body, limit);
        if was_cut {
            text.push_str(&format!("\n… (cut: `ncl approvals get {}` shows the whole request)", a.id));
        }
        text
    };
    ChoiceCard {
        id: a.id.clone(),
        title,
        text,
        options: labels
            .into_iter()
            .enumerate()
            .map(|(i, label)| ChoiceOption { label, callback: callback(&a.id, i) })
            .collect(),
        reply_hint: hint,
    }
}

/// The text a card is edited to once the request has ended: its title, the outcome and who
/// decided, without buttons.
pub fn final_text(a: &Approval) -> String {
    let by = a.decided_by.as_deref().map(|b| format!(" by {b}")).unwrap_or_default();
    let title = render(a, 0).title;
    let outcome = match (a.kind, a.status) {
        (ApprovalKind::Question, ApprovalStatus::Executed) => {
            format!("Answered{by}: {}", a.result.as_deref().unwrap_or(""))
        }
        (_, ApprovalStatus::Executed) => format!("Approved{by}; done: {}", a.result.as_deref().unwrap_or("")),
        (_, ApprovalStatus::Approved) => format!("Approved{by}; being carried out"),
        (_, ApprovalStatus::Denied) => format!("Denied{by}"),
        (_, ApprovalStatus::Expired) => "Expired: nobody decided in time".to_string(),
        (_, ApprovalStatus::Failed) => format!("Failed: {}", a.result.as_deref().unwrap_or("")),
        (_, ApprovalStatus::Cancelled) => "Cancelled".to_string(),
        (_, ApprovalStatus::Pending) => "Waiting for a decision".to_string(),
    };
    format!("{title} ({})\n{outcome}", a.id)
}

//! The agent output syntax (DESIGN §6).
//!
//! A provider's final text may contain any number of `<message to="destination">…</message>`
//! blocks; each becomes one outbound message. An optional `reply_to="<seq>"` attribute names the
//! message (by its `id` in the prompt) the block answers; without it the newest triggering
//! message from the destination's chat is assumed (reference §5.3). `<internal>…</internal>` spans are removed
//! everywhere (also inside blocks). Everything else is scratchpad: logged, never delivered.
//! An unterminated `<message …>` block is not delivered (its text counts as scratchpad), so a
//! truncated output can never send half a sentence.

/// One `<message to="…">` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageBlock {
    /// The destination name from the `to` attribute.
    pub to: String,
    /// The seq from the `reply_to` attribute, when present and numeric.
    pub reply_to: Option<i64>,
    /// The block's text with `<internal>` spans removed, trimmed.
    pub text: String,
}

/// The result of parsing one output text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedOutput {
    /// The message blocks, in order of appearance. Blocks whose text is empty are dropped.
    pub messages: Vec<MessageBlock>,
    /// Text outside blocks (trimmed), for logs.
    pub scratchpad: String,
}

/// Parses agent output text. Never fails: anything malformed ends up in the scratchpad (as text:
/// the opening tag of a block that is never closed and stray closing tags are left out).
pub fn parse_output(text: &str) -> ParsedOutput {
    let text = strip_internal(text);
    let mut out = ParsedOutput::default();
    let mut scratch = String::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("<message") {
        let after_tag = &rest[start + "<message".len()..];
        // `<messages>` or `<message_x>` are not our tag.
        if !after_tag.starts_with(|c: char| c.is_whitespace() || c == '>') {
            scratch.push_str(&rest[..start + "<message".len()]);
            rest = after_tag;
            continue;
        }
        let Some(open_end) = after_tag.find('>') else { break };
        let attrs = &after_tag[..open_end];
        let body_and_rest = &after_tag[open_end + 1..];
        let Some(close) = body_and_rest.find("</message>") else {
            // Never closed: the text after the opening tag is plain text, without the tag (the
            // scratchpad may be shown to the user as the answer).
            scratch.push_str(&rest[..start]);
            scratch.push_str(body_and_rest);
            rest = "";
            break;
        };
        scratch.push_str(&rest[..start]);
        let body = body_and_rest[..close].trim();
        if let Some(to) = attr_value(attrs, "to")
            && !body.is_empty()
        {
            let reply_to = attr_value(attrs, "reply_to").and_then(|v| v.trim().parse().ok());
            out.messages.push(MessageBlock { to: to.to_string(), reply_to, text: body.to_string() });
        } else if !body.is_empty() {
            // A block without a destination is not deliverable; keep it visible in logs.
            scratch.push_str(body);
        }
        rest = &body_and_rest[close + "</message>".len()..];
    }
    scratch.push_str(rest);
    // A closing tag without its opening one is markup, not text.
    out.scratchpad = scratch.replace("</message>", "").trim().to_string();
    out
}

/// Removes `<internal>…</internal>` spans; an unterminated one runs to the end of the text.
pub fn strip_internal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<internal>") {
        out.push_str(&rest[..start]);
        match rest[start..].find("</internal>") {
            Some(end) => rest = &rest[start + end + "</internal>".len()..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Finds `name="value"` (or `name='value'`) in a tag's attribute text.
fn attr_value<'a>(attrs: &'a str, name: &str) -> Option<&'a str> {
    let mut rest = attrs;
    while let Some(pos) = rest.find(name) {
        let before_ok = pos == 0 || rest[..pos].ends_with(char::is_whitespace);
        let after = rest[pos + name.len()..].trim_start();
        if before_ok && let Some(after_eq) = after.strip_prefix('=') {
            let after_eq = after_eq.trim_start();
            let quote = after_eq.chars().next()?;
            if quote == '"' || quote == '\'' {
                let value = &after_eq[1..];
                let end = value.find(quote)?;
                return Some(&value[..end]);
            }
            return None;
        }
        rest = &rest[pos + name.len()..];
    }
    None
}

/// Wraps `text` in a message block addressed to `to`, answering message `reply_to` if given
/// (what a provider that always answers its sender, like `echo`, emits).
pub fn message_block(to: &str, reply_to: Option<i64>, text: &str) -> String {
    match reply_to {
        Some(seq) => format!("<message to=\"{to}\" reply_to=\"{seq}\">{text}</message>"),
        None => format!("<message to=\"{to}\">{text}</message>"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_internal_and_scratchpad() {
        let p = parse_output(
            "thinking <internal>secret</internal>\n<message to=\"cli\">hello <internal>x</internal>world</message>\
             between<message to='family'> hi </message>tail",
        );
        assert_eq!(
            p.messages,
            vec![
                MessageBlock { to: "cli".into(), reply_to: None, text: "hello world".into() },
                MessageBlock { to: "family".into(), reply_to: None, text: "hi".into() },
            ]
        );
        assert_eq!(p.scratchpad, "thinking \nbetweentail");
    }

    #[test]
    fn malformed_blocks_are_never_delivered() {
        assert!(parse_output("<message to=\"cli\">cut off").messages.is_empty());
        assert!(parse_output("<message>no destination</message>").messages.is_empty());
        assert!(parse_output("<message to=\"cli\">   </message>").messages.is_empty());
        assert!(parse_output("<messages to=\"cli\">x</messages>").messages.is_empty());
        assert!(parse_output("<message to=cli>unquoted</message>").messages.is_empty());
        assert_eq!(parse_output("<internal>never closed <message to=\"a\">x</message>").messages, vec![]);
        // What is left is text, without the broken markup.
        assert_eq!(parse_output("before <message to=\"cli\">cut off").scratchpad, "before cut off");
        assert_eq!(parse_output("stray</message> close").scratchpad, "stray close");
    }

    #[test]
    fn to_attribute_is_matched_as_a_whole_word() {
        let p = parse_output("<message into=\"x\" to=\"y\">t</message>");
        assert_eq!(p.messages, vec![MessageBlock { to: "y".into(), reply_to: None, text: "t".into() }]);
    }

    #[test]
    fn message_block_round_trips() {
        let p = parse_output(&message_block("cli", Some(4), "echo: hi"));
        assert_eq!(
            p.messages,
            vec![MessageBlock { to: "cli".into(), reply_to: Some(4), text: "echo: hi".into() }]
        );
        assert_eq!(parse_output(&message_block("cli", None, "x")).messages[0].reply_to, None);
    }
}

//! Small helpers shared by the model implementations (quoting, numbers, tool-call arguments).

use super::ModelError;
use nanoclaw_protocol::settings::RunnerProvider;

/// The model id of an HTTP provider; errors (one line naming the setting) when unset.
pub(crate) fn model_of(provider: &RunnerProvider) -> Result<&str, String> {
    provider
        .model
        .as_deref()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| format!("providers.{}.model is not set", provider.name))
}

/// At most `max` bytes of `text`, cut at a character boundary (for messages quoting input).
pub(crate) fn clip(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A temperature as JSON with its short decimal form (`0.7`, not `0.699999988079071`).
pub(crate) fn temperature(t: f32) -> serde_json::Value {
    t.to_string().parse::<f64>().map(serde_json::Value::from).unwrap_or(serde_json::Value::Null)
}

/// The assembled arguments of tool call `index` (`name`) as a JSON object; an empty string is
/// `{}`.
///
/// Errors: [`ModelError::Fatal`] naming the call when the text is not complete JSON (a
/// truncated stream) or not an object.
pub(crate) fn parse_arguments(index: u64, name: &str, text: &str) -> Result<serde_json::Value, ModelError> {
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) if value.is_object() => Ok(value),
        Ok(_) => Err(ModelError::Fatal {
            message: format!(
                "tool call {index} ({name}): the arguments are not a JSON object: {}",
                clip(text, 200)
            ),
        }),
        Err(e) => Err(ModelError::Fatal {
            message: format!(
                "tool call {index} ({name}): the arguments are not complete JSON ({e}): {}",
                clip(text, 200)
            ),
        }),
    }
}

//! The usage tap: reads a copy of a provider's answer as it streams past, finds its `usage`
//! token counts, and records them when the answer ends (or the runner hangs up).
//!
//! Both APIs report usage in the stream: OpenAI in the last chunk's `usage` (`prompt_tokens`,
//! `completion_tokens`, with `stream_options.include_usage`), Anthropic in `message_start`'s
//! `message.usage` (`input_tokens` + cache reads/creations) and `message_delta`'s `usage`
//! (`output_tokens`, cumulative). A non-streamed answer has them in its one JSON body. Counts are
//! cumulative, so the tap keeps the largest seen. Memory is bounded: one SSE line or one JSON
//! body of at most [`MAX_LINE_BYTES`]; a longer one is skipped, never buffered.

use nanoclaw_actors::store::{self, Store};
use serde_json::Value;
use tracing::warn;

/// Longest SSE line (or non-streamed JSON body) the tap parses.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Where the tokens of one answer are recorded.
pub(super) struct Recorder {
    pub(super) store: Store,
    pub(super) agent_group_id: String,
    pub(super) day: String,
    pub(super) provider: String,
}

/// See the module doc. Records on drop.
pub(super) struct UsageTap {
    sse: bool,
    buf: Vec<u8>,
    /// The current line passed [`MAX_LINE_BYTES`]: skip to its end.
    skipping: bool,
    input: u64,
    output: u64,
    recorder: Option<Recorder>,
}

impl UsageTap {
    /// A tap for an answer that is SSE (`text/event-stream`) or one JSON body.
    pub(super) fn new(sse: bool, recorder: Recorder) -> Self {
        Self { sse, buf: Vec::new(), skipping: false, input: 0, output: 0, recorder: Some(recorder) }
    }

    /// Looks at the next chunk of the answer.
    pub(super) fn feed(&mut self, chunk: &[u8]) {
        if !self.sse {
            if !self.skipping {
                if self.buf.len() + chunk.len() > MAX_LINE_BYTES {
                    self.skipping = true;
                    self.buf = Vec::new();
                } else {
                    self.buf.extend_from_slice(chunk);
                }
            }
            return;
        }
        let mut rest = chunk;
        while let Some(i) = rest.iter().position(|b| *b == b'\n') {
            let (part, tail) = rest.split_at(i);
            if !self.skipping && self.buf.len() + part.len() <= MAX_LINE_BYTES {
                self.buf.extend_from_slice(part);
                let line = std::mem::take(&mut self.buf);
                self.line(&line);
            }
            self.buf.clear();
            self.skipping = false;
            rest = &tail[1..];
        }
        if !self.skipping {
            if self.buf.len() + rest.len() > MAX_LINE_BYTES {
                self.skipping = true;
                self.buf = Vec::new();
            } else {
                self.buf.extend_from_slice(rest);
            }
        }
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else { return };
        if let Ok(v) = serde_json::from_slice::<Value>(data.trim_ascii()) {
            self.observe(&v);
        }
    }

    fn observe(&mut self, v: &Value) {
        for usage in [&v["usage"], &v["message"]["usage"]] {
            if !usage.is_object() {
                continue;
            }
            let n = |k: &str| usage[k].as_u64().unwrap_or(0);
            let input = n("input_tokens")
                + n("cache_read_input_tokens")
                + n("cache_creation_input_tokens")
                + n("prompt_tokens");
            let output = n("output_tokens") + n("completion_tokens");
            self.input = self.input.max(input);
            self.output = self.output.max(output);
        }
    }

    /// The tokens seen so far (a non-streamed body is parsed here).
    pub(super) fn totals(&mut self) -> (u64, u64) {
        if !self.sse && !self.skipping && !self.buf.is_empty() {
            let body = std::mem::take(&mut self.buf);
            if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                self.observe(&v);
            }
        } else if self.sse && !self.skipping && !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            self.line(&line);
        }
        (self.input, self.output)
    }
}

impl Drop for UsageTap {
    fn drop(&mut self) {
        let (input, output) = self.totals();
        let Some(r) = self.recorder.take() else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        rt.spawn(async move {
            let Recorder { store, agent_group_id, day, provider } = r;
            let group = agent_group_id.clone();
            let result =
                store.call(move |c| store::record_tokens(c, &group, &day, &provider, input, output)).await;
            if let Err(e) = result {
                warn!(agent_group = %agent_group_id, error = %e, "token usage not recorded");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tap(sse: bool) -> UsageTap {
        UsageTap { sse, buf: Vec::new(), skipping: false, input: 0, output: 0, recorder: None }
    }

    #[test]
    fn openai_usage_chunk_split_anywhere() {
        let text = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":352,\"completion_tokens\":31}}\n\ndata: [DONE]\n\n";
        for split in 0..text.len() {
            let mut t = tap(true);
            t.feed(&text[..split]);
            t.feed(&text[split..]);
            assert_eq!(t.totals(), (352, 31), "split at {split}");
        }
    }

    #[test]
    fn anthropic_usage_adds_cache_and_takes_last_output() {
        let text = "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"cache_read_input_tokens\":398,\"input_tokens\":1,\"output_tokens\":0}}}\r\n\r\n\
                    event: message_delta\r\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":31}}\r\n\r\n";
        let mut t = tap(true);
        t.feed(text.as_bytes());
        assert_eq!(t.totals(), (399, 31));
        let mut t = tap(false);
        t.feed(br#"{"usage":{"input_tokens":5,"output_tokens":7}}"#);
        assert_eq!(t.totals(), (5, 7));
    }

    #[test]
    fn an_over_long_line_is_skipped_not_buffered() {
        let mut t = tap(true);
        t.feed(b"data: {\"usage\":{\"prompt_tokens\":");
        for _ in 0..300 {
            t.feed(&[b'1'; 4096]);
            assert!(t.buf.len() <= MAX_LINE_BYTES);
        }
        t.feed(b"}}\ndata: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n");
        assert_eq!(t.totals(), (3, 4));
    }
}

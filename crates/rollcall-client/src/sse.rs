//! The live event stream, `GET /v1/events/stream` (`text/event-stream`).
//!
//! [`SseParser`] is the wire format as a pure, incremental parser: bytes in,
//! complete messages out, however the bytes were split into chunks.
//! [`EventStream`] reads a response through it and decodes each message's
//! data as an [`Event`].
//!
//! The server sends a comment at least every 15 s, so a connection that is
//! silent for much longer than that is dead even if TCP has not noticed;
//! [`EventStream::next`] then reports [`Error::StreamIdle`]. The stream does
//! not reconnect by itself: resume with
//! [`Client::event_stream`](crate::Client::event_stream)`(stream.last_seq())`,
//! which replays everything after that seq, then goes live.

use std::collections::VecDeque;
use std::time::Duration;

use crate::error::Error;
use crate::model::Event;

/// One dispatched server-sent-events message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseMessage {
    /// The last `id:` seen (it persists across messages, per the SSE spec).
    pub id: Option<String>,
    /// The `event:` field, `message` if none was given.
    pub event: String,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// An incremental `text/event-stream` parser (the WHATWG rules, minus
/// `retry:`, which the client does not use).
#[derive(Debug, Default)]
pub struct SseParser {
    /// The bytes of the line being read.
    line: Vec<u8>,
    /// A `\r` ended the last line; a `\n` right after it belongs to it.
    after_cr: bool,
    /// `data:` lines of the message being built, each followed by `\n`.
    data: String,
    /// `event:` of the message being built.
    event: Option<String>,
    /// The last event id, kept across messages.
    last_id: Option<String>,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds `bytes` and returns the messages they complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseMessage> {
        let mut out = Vec::new();
        for &b in bytes {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\r' | b'\n' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(m) = self.line_done(&line) {
                        out.push(m);
                    }
                }
                _ => {
                    self.after_cr = false;
                    self.line.push(b);
                }
            }
        }
        out
    }

    /// The last event id seen.
    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    fn line_done(&mut self, line: &[u8]) -> Option<SseMessage> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line[0] == b':' {
            return None; // a comment: the keep-alive
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "event" => self.event = Some(value.to_owned()),
            "id" if !value.contains('\0') => self.last_id = Some(value.to_owned()),
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseMessage> {
        let event = self.event.take();
        if self.data.is_empty() {
            return None;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop(); // the `\n` after the last data line
        Some(SseMessage {
            id: self.last_id.clone(),
            event: event.unwrap_or_else(|| "message".to_owned()),
            data,
        })
    }
}

/// A live stream of events from `GET /v1/events/stream`. Get one with
/// [`Client::event_stream`](crate::Client::event_stream).
#[derive(Debug)]
pub struct EventStream {
    /// The open response whose body is the stream.
    response: reqwest::Response,
    /// The request URL, for errors.
    url: String,
    parser: SseParser,
    /// Messages parsed but not yet handed out.
    pending: VecDeque<SseMessage>,
    /// How long the stream may be silent before it is presumed dead.
    idle_timeout: Duration,
    /// The seq of the last event handed out.
    last_seq: Option<u64>,
    /// Set after the end or an error: the stream yields nothing more.
    done: bool,
}

impl EventStream {
    pub(crate) fn new(
        response: reqwest::Response,
        url: String,
        idle_timeout: Duration,
        after: Option<u64>,
    ) -> Self {
        EventStream {
            response,
            url,
            parser: SseParser::new(),
            pending: VecDeque::new(),
            idle_timeout,
            last_seq: after,
            done: false,
        }
    }

    /// The seq of the last event received (or the `after` the stream was
    /// opened with): pass it to `Client::event_stream` to resume without
    /// gaps or repeats.
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// The next event; `None` when the server closed the stream. After an
    /// error the stream is finished and returns `None`.
    pub async fn next(&mut self) -> Option<Result<Event, Error>> {
        loop {
            if let Some(msg) = self.pending.pop_front() {
                return Some(self.decode(msg));
            }
            if self.done {
                return None;
            }
            match tokio::time::timeout(self.idle_timeout, self.response.chunk()).await {
                Ok(Ok(Some(bytes))) => self.pending.extend(self.parser.push(&bytes)),
                Ok(Ok(None)) => {
                    self.done = true;
                    return None;
                }
                Ok(Err(source)) => {
                    self.done = true;
                    return Some(Err(Error::Transport {
                        url: self.url.clone(),
                        source,
                    }));
                }
                Err(_) => {
                    self.done = true;
                    return Some(Err(Error::StreamIdle(self.idle_timeout)));
                }
            }
        }
    }

    fn decode(&mut self, msg: SseMessage) -> Result<Event, Error> {
        match serde_json::from_str::<Event>(&msg.data) {
            Ok(event) => {
                self.last_seq = Some(event.seq);
                Ok(event)
            }
            Err(source) => Err(Error::Decode {
                url: self.url.clone(),
                status: self.response.status(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STREAM: &str = ": keep-alive\n\
        id: 41\nevent: worker.online\ndata: {\"seq\":41}\n\n\
        : keep-alive\r\n\
        id: 42\r\nevent: worker.offline\r\ndata: {\"seq\":\r\ndata:42}\r\n\r\n\
        data\n\n\
        event: ignored-without-data\n\n\
        id: 43\rdata: x\r\r";

    fn expected() -> Vec<SseMessage> {
        vec![
            SseMessage {
                id: Some("41".into()),
                event: "worker.online".into(),
                data: "{\"seq\":41}".into(),
            },
            SseMessage {
                id: Some("42".into()),
                event: "worker.offline".into(),
                data: "{\"seq\":\n42}".into(),
            },
            SseMessage {
                id: Some("42".into()),
                event: "message".into(),
                data: "".into(),
            },
            SseMessage {
                id: Some("43".into()),
                event: "message".into(),
                data: "x".into(),
            },
        ]
    }

    #[test]
    fn parses_fields_comments_and_all_line_endings() {
        let mut p = SseParser::new();
        assert_eq!(p.push(STREAM.as_bytes()), expected());
        assert_eq!(p.last_id(), Some("43"));
    }

    #[test]
    fn a_data_line_without_colon_is_an_empty_data_line() {
        // `data` alone appends an empty line, so the message is dispatched
        // with empty data (the spec's behaviour); `EventStream` would then
        // report a decode error rather than silently skip it.
        let mut p = SseParser::new();
        let msgs = p.push(b"data\n\n");
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].data, "");
    }

    #[test]
    fn an_unfinished_message_is_held_back() {
        let mut p = SseParser::new();
        assert!(p.push(b"id: 1\ndata: {}\n").is_empty());
        assert_eq!(p.push(b"\n").len(), 1);
    }

    proptest! {
        #[test]
        fn chunking_does_not_change_the_messages(cuts in proptest::collection::vec(0usize..STREAM.len(), 0..12)) {
            let bytes = STREAM.as_bytes();
            let mut cuts = cuts;
            cuts.sort_unstable();
            let mut p = SseParser::new();
            let mut got = Vec::new();
            let mut start = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                got.extend(p.push(&bytes[start..c]));
                start = c;
            }
            prop_assert_eq!(got, expected());
        }
    }
}

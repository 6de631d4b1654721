//! Spans: what one operation of the sidecar records (its name, kind, times, attributes and
//! outcome), and the guard that records it, exported when it ends.
//!
//! A span of an unsampled trace still has a context (so that the trace id and the sampling
//! decision travel on), but records nothing: no allocation beyond the context, nothing
//! queued.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::context::{SpanContext, SpanId};
use crate::tracer::Tracer;

/// What a span stands for, as OpenTelemetry names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// A request this process served (an API call, a call from a peer sidecar).
    Server,
    /// A request this process made (to a peer sidecar, a store, the app).
    Client,
    /// A message handed to a broker.
    Producer,
    /// A message delivered from a broker.
    Consumer,
    Internal,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(Cow<'static, str>),
    Int(i64),
    Bool(bool),
}

impl From<&'static str> for Value {
    fn from(s: &'static str) -> Self {
        Value::Str(Cow::Borrowed(s))
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(Cow::Owned(s))
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

/// A finished span, as exporters see it.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanData {
    pub context: SpanContext,
    /// The parent span (in this process or the caller's); none for a trace's root.
    pub parent: Option<SpanId>,
    pub name: Cow<'static, str>,
    pub kind: SpanKind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(&'static str, Value)>,
    /// Why the operation failed; none when it succeeded.
    pub error: Option<String>,
}

/// A span being recorded; it ends (and is queued for export) when [`Span::end`] is called
/// or it is dropped, so an early return or a cancelled request still ends its span.
#[derive(Debug)]
pub struct Span {
    context: SpanContext,
    recording: Option<(Box<SpanData>, Tracer)>,
}

pub(crate) fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Span {
    pub(crate) fn recording(
        tracer: Tracer,
        context: SpanContext,
        parent: Option<SpanId>,
        name: Cow<'static, str>,
        kind: SpanKind,
    ) -> Self {
        let data = SpanData {
            context: context.clone(),
            parent,
            name,
            kind,
            start_unix_nanos: unix_nanos(),
            end_unix_nanos: 0,
            attributes: Vec::new(),
            error: None,
        };
        Span {
            context,
            recording: Some((Box::new(data), tracer)),
        }
    }

    /// A span that only carries its context on (an unsampled trace).
    pub fn silent(context: SpanContext) -> Self {
        Span {
            context,
            recording: None,
        }
    }

    /// The span's context: what its children and downstream calls name as their parent.
    pub fn context(&self) -> &SpanContext {
        &self.context
    }

    /// Whether the span records anything (its trace is sampled).
    pub fn is_recording(&self) -> bool {
        self.recording.is_some()
    }

    pub fn set_attribute(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some((data, _)) = &mut self.recording {
            data.attributes.push((key, value.into()));
        }
    }

    /// Marks the operation failed, with why.
    pub fn set_error(&mut self, message: impl Into<String>) {
        if let Some((data, _)) = &mut self.recording {
            data.error = Some(message.into());
        }
    }

    /// Ends the span now.
    pub fn end(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if let Some((mut data, tracer)) = self.recording.take() {
            data.end_unix_nanos = unix_nanos().max(data.start_unix_nanos);
            tracer.queue(*data);
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.finish();
    }
}

//! W3C trace context (`traceparent`, version 00) for produced records: a record produced
//! from a consumed one continues its trace as a child; others may start a new trace.
//! With spans exported ([`crate::telemetry`]), the contexts come from real spans instead
//! of random ids.

use std::fmt::Write as _;

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

/// A parsed `traceparent`: `00-<trace id>-<parent id>-<flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    trace_id: u128,
    parent_id: u64,
    flags: u8,
}

impl TraceParent {
    /// Parses a header value; `None` when it is not a valid version-00 traceparent.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if parts.next().is_some() || version != "00" || !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let parent_id = u64::from_str_radix(parent, 16).ok()?;
        (trace_id != 0 && parent_id != 0).then_some(Self {
            trace_id,
            parent_id,
            flags: u8::from_str_radix(flags, 16).ok()?,
        })
    }

    /// A new sampled trace.
    pub fn start(random: impl FnMut() -> u128) -> Self {
        let mut random = random;
        let trace_id = nonzero(&mut random);
        Self { trace_id, parent_id: nonzero(&mut random) as u64, flags: 0x01 }
    }

    /// The context of a record produced from this one: same trace and flags, a new span.
    pub fn child(self, random: impl FnMut() -> u128) -> Self {
        let mut random = random;
        Self { parent_id: nonzero(&mut random) as u64, ..self }
    }

    /// The trace id, as in the header.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The parent (span) id, as in the header.
    pub fn parent_id(&self) -> String {
        format!("{:016x}", self.parent_id)
    }

    /// The context of a span, as the header of a record it produced; `None` for the
    /// invalid context of a span that was never started.
    pub fn of_span(context: &SpanContext) -> Option<Self> {
        context.is_valid().then(|| Self {
            trace_id: u128::from_be_bytes(context.trace_id().to_bytes()),
            parent_id: u64::from_be_bytes(context.span_id().to_bytes()),
            flags: context.trace_flags().to_u8(),
        })
    }

    /// The remote span context this header names: the parent or link of a span.
    pub fn span_context(self) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes(self.trace_id.to_be_bytes()),
            SpanId::from_bytes(self.parent_id.to_be_bytes()),
            TraceFlags::new(self.flags),
            true,
            TraceState::NONE,
        )
    }
}

/// Where the trace contexts of produced records come from: random ids (spans are not
/// exported) or the spans of [`crate::telemetry`].
pub trait ContextSource {
    /// The context of a record produced from one that carried `parent`.
    fn child(&mut self, parent: TraceParent) -> TraceParent;
    /// The context of a record that starts a trace (`traceContext: start`).
    fn start(&mut self) -> TraceParent;
    /// The context of a record without one under `propagate`: none, unless exported spans
    /// give it one a trace backend can find.
    fn untraced(&mut self) -> Option<TraceParent>;
}

/// Random ids: a child span id, or a new trace.
impl<F: FnMut() -> u128> ContextSource for F {
    fn child(&mut self, parent: TraceParent) -> TraceParent {
        parent.child(&mut *self)
    }

    fn start(&mut self) -> TraceParent {
        TraceParent::start(&mut *self)
    }

    fn untraced(&mut self) -> Option<TraceParent> {
        None
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = String::with_capacity(55);
        let _ = write!(text, "00-{:032x}-{:016x}-{:02x}", self.trace_id, self.parent_id, self.flags);
        f.write_str(&text)
    }
}

fn nonzero(random: &mut impl FnMut() -> u128) -> u128 {
    loop {
        let value = random();
        if value as u64 != 0 {
            return value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_w3c_example_round_trips() {
        let parsed = TraceParent::parse(EXAMPLE).unwrap();
        assert_eq!(parsed.to_string(), EXAMPLE);
        assert_eq!(parsed.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn invalid_values_are_refused() {
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags_with_a_new_span() {
        let parent = TraceParent::parse(EXAMPLE).unwrap();
        let child = parent.child(|| 0xabc);
        assert_eq!(child.to_string(), "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000abc-01");
    }

    #[test]
    fn a_traceparent_and_a_span_context_convert_both_ways() {
        let parsed = TraceParent::parse(EXAMPLE).unwrap();
        let context = parsed.span_context();
        assert!(context.is_valid() && context.is_remote() && context.is_sampled());
        assert_eq!(context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(TraceParent::of_span(&context), Some(parsed));
        assert_eq!(parsed.parent_id(), "00f067aa0ba902b7");
        let unsampled = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.span_context().is_sampled(), "the flags travel");
        assert_eq!(TraceParent::of_span(&SpanContext::empty_context()), None);
    }

    #[test]
    fn a_new_trace_is_sampled_and_never_zero() {
        let mut values = [0u128, 7, 9].into_iter();
        let started = TraceParent::start(|| values.next().unwrap_or(1));
        assert_eq!(started.to_string(), "00-00000000000000000000000000000007-0000000000000009-01");
        assert!(TraceParent::parse(&started.to_string()).is_some());
    }
}

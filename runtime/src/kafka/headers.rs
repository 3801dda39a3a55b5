//! The headers of produced records: headers carried from the consumed record
//! (`forwardHeaders`), the spec's static headers, and W3C trace context.

use weir_crds::{KafkaSink, TraceContext};

use super::trace::{ContextSource, TraceParent};
use crate::codec::{HeaderCarry, TRACEPARENT};

/// A header: name and value (`None` for a null value).
pub type Header = (String, Option<String>);

/// How the sink sets headers.
#[derive(Debug, Clone)]
pub struct HeaderPolicy {
    fixed: Vec<(String, String)>,
    forward: bool,
    trace: TraceContext,
}

impl HeaderPolicy {
    /// The policy of `sink`.
    pub fn new(sink: &KafkaSink) -> Self {
        Self {
            fixed: sink.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            forward: sink.forward_headers,
            trace: sink.trace_context,
        }
    }

    /// Which consumed headers the decoder must carry to the sink.
    pub fn carry(&self) -> HeaderCarry {
        match (self.forward, self.trace) {
            (true, _) => HeaderCarry::All,
            (false, TraceContext::Propagate | TraceContext::Start) => HeaderCarry::TraceParent,
            (false, TraceContext::Off) => HeaderCarry::Nothing,
        }
    }

    /// Whether no record gets a header: the producer can skip building them.
    pub fn is_empty(&self) -> bool {
        self.fixed.is_empty() && !self.forward && self.trace == TraceContext::Off
    }

    /// The headers of a record produced from a row that carried `carried`. A static
    /// header replaces a carried one of the same name; `traceparent` continues the carried
    /// trace as a child span, or starts one with `start`; `contexts` gives those spans
    /// (random ids, or exported spans).
    pub fn headers(&self, carried: &[Header], mut contexts: impl ContextSource) -> Vec<Header> {
        // The common case on the per-record path: nothing to write, nothing allocated.
        if carried.is_empty() && self.fixed.is_empty() {
            let traceparent = match self.trace {
                TraceContext::Off => None,
                TraceContext::Start => Some(contexts.start()),
                TraceContext::Propagate => contexts.untraced(),
            };
            return traceparent.map_or_else(Vec::new, |t| vec![(TRACEPARENT.to_owned(), Some(t.to_string()))]);
        }
        let mut out: Vec<Header> = Vec::with_capacity(carried.len() + self.fixed.len() + 1);
        if self.forward {
            out.extend(
                carried
                    .iter()
                    .filter(|(name, _)| name != TRACEPARENT && !self.fixed.iter().any(|(fixed, _)| fixed == name))
                    .cloned(),
            );
        }
        out.extend(self.fixed.iter().map(|(k, v)| (k.clone(), Some(v.clone()))));
        let parent = carried
            .iter()
            .find(|(name, _)| name == TRACEPARENT)
            .and_then(|(_, value)| value.as_deref())
            .and_then(TraceParent::parse);
        let traceparent = match (self.trace, parent) {
            (TraceContext::Off, _) => None,
            (_, Some(parent)) => Some(contexts.child(parent)),
            (TraceContext::Start, None) => Some(contexts.start()),
            (TraceContext::Propagate, None) => contexts.untraced(),
        };
        if let Some(traceparent) = traceparent {
            out.retain(|(name, _)| name != TRACEPARENT);
            out.push((TRACEPARENT.to_owned(), Some(traceparent.to_string())));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use weir_crds::JobDocument;

    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn policy(sink_extra: &str) -> HeaderPolicy {
        let text = format!(
            "source: {{kafka: {{bootstrapServers: b:9092, topic: in}}}}\n\
             sink: {{kafka: {{bootstrapServers: b:9092, topic: out{sink_extra}}}}}"
        );
        HeaderPolicy::new(&JobDocument::parse(&text).unwrap().spec.sink.kafka)
    }

    fn carried() -> Vec<Header> {
        vec![
            ("tenant".into(), Some("acme".into())),
            ("origin".into(), Some("web".into())),
            (TRACEPARENT.into(), Some(PARENT.into())),
        ]
    }

    fn named<'h>(headers: &'h [Header], name: &str) -> Option<&'h str> {
        headers.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.as_deref())
    }

    #[test]
    fn by_default_only_the_trace_travels_as_a_child_span() {
        let policy = policy("");
        assert_eq!(policy.carry(), HeaderCarry::TraceParent);
        let headers = policy.headers(&carried(), || 0x1234);
        assert_eq!(
            headers,
            [(TRACEPARENT.into(), Some("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000001234-01".into()))]
        );
        assert!(policy.headers(&[], || 1).is_empty(), "propagate starts no trace");
    }

    #[test]
    fn forwarded_headers_yield_to_static_ones_of_the_same_name() {
        let policy = policy(", forwardHeaders: true, headers: {origin: weir, team: data}");
        assert_eq!(policy.carry(), HeaderCarry::All);
        let headers = policy.headers(&carried(), || 5);
        assert_eq!(named(&headers, "tenant"), Some("acme"));
        assert_eq!(named(&headers, "origin"), Some("weir"));
        assert_eq!(named(&headers, "team"), Some("data"));
        assert_eq!(headers.iter().filter(|(n, _)| n == "origin").count(), 1);
        assert!(named(&headers, TRACEPARENT).is_some_and(|t| t.ends_with("-0000000000000005-01")));
    }

    #[test]
    fn start_gives_every_other_record_a_new_trace() {
        let headers = policy(", traceContext: start").headers(&[], || 9);
        let traceparent = named(&headers, TRACEPARENT).unwrap();
        assert!(TraceParent::parse(traceparent).is_some(), "{traceparent}");
    }

    /// Spans as [`crate::telemetry`] gives them: children get span 0xc, the rest the batch's.
    struct Exported;

    impl ContextSource for Exported {
        fn child(&mut self, parent: TraceParent) -> TraceParent {
            parent.child(|| 0xc)
        }

        fn start(&mut self) -> TraceParent {
            TraceParent::start(|| 0xb)
        }

        fn untraced(&mut self) -> Option<TraceParent> {
            Some(self.start())
        }
    }

    #[test]
    fn with_exported_spans_every_record_gets_a_context_unless_off() {
        const BATCH: &str = "00-0000000000000000000000000000000b-000000000000000b-01";
        let propagate = policy("");
        assert_eq!(named(&propagate.headers(&[], Exported), TRACEPARENT), Some(BATCH), "the batch's span");
        let child = propagate.headers(&carried(), Exported);
        assert_eq!(named(&child, TRACEPARENT), Some("00-4bf92f3577b34da6a3ce929d0e0e4736-000000000000000c-01"));
        assert_eq!(named(&policy(", traceContext: start").headers(&[], Exported), TRACEPARENT), Some(BATCH));
        assert!(policy(", traceContext: off").headers(&carried(), Exported).is_empty());
    }

    #[test]
    fn off_writes_no_traceparent_even_when_forwarding() {
        let policy = policy(", traceContext: off, forwardHeaders: true");
        let headers = policy.headers(&carried(), || 1);
        assert_eq!(named(&headers, TRACEPARENT), None);
        assert_eq!(named(&headers, "tenant"), Some("acme"));
        assert_eq!(self::policy(", traceContext: off").carry(), HeaderCarry::Nothing);
        assert!(self::policy(", traceContext: off").is_empty());
    }
}

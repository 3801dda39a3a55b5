//! Kubernetes Events sent in the background, as client-go's recorder sends them: a reconcile
//! hands its notice over and goes on. An Event tells a user what happened; no step of a
//! reconcile depends on it, so none should wait on the API server for it.

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Recorder};
use prometheus::IntCounter;
use tokio::sync::mpsc;
use tracing::warn;

/// Events waiting to be sent. A burst (1,000 jobs deployed at once make 1,000 Events) fits;
/// past it, Events are dropped and counted rather than holding reconciles up.
const QUEUE: usize = 4096;
/// Events sent at once.
const SENDERS: usize = 8;
/// The longest note the API server accepts (bytes); an apply error naming several invalid
/// fields of several children is longer.
const MAX_NOTE: usize = 1024;

/// Hands Events to a background sender.
#[derive(Clone, Debug)]
pub struct Announcer {
    queue: mpsc::Sender<(Event, ObjectReference)>,
    dropped: IntCounter,
}

impl Announcer {
    /// Starts the sender on the current runtime. It runs until every `Announcer` is gone and
    /// the queue is drained.
    pub fn start(recorder: Recorder, dropped: IntCounter) -> Self {
        let (queue, mut pending) = mpsc::channel::<(Event, ObjectReference)>(QUEUE);
        let events = futures::stream::poll_fn(move |cx| pending.poll_recv(cx));
        tokio::spawn(events.for_each_concurrent(SENDERS, move |(event, reference)| {
            let recorder = recorder.clone();
            async move {
                if let Err(e) = recorder.publish(&event, &reference).await {
                    warn!(reason = %event.reason, "publishing an event: {e}");
                }
            }
        }));
        Self { queue, dropped }
    }

    /// Queues `event` about `reference`; when the queue is full (or the sender has stopped),
    /// drops it and counts it.
    pub fn announce(&self, mut event: Event, reference: ObjectReference) {
        event.note = event.note.map(fit_note);
        let why = match self.queue.try_send((event, reference)) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full((event, _))) => (event, "the event queue is full"),
            Err(mpsc::error::TrySendError::Closed((event, _))) => (event, "the event sender has stopped"),
        };
        warn!(reason = %why.0.reason, "{}: dropped an event", why.1);
        self.dropped.inc();
    }
}

/// `note` cut at a character boundary to at most [`MAX_NOTE`] bytes, ending in `…` when cut
/// (the whole text stays in the condition and the operator's log).
fn fit_note(note: String) -> String {
    if note.len() <= MAX_NOTE {
        return note;
    }
    const ELLIPSIS: &str = "…";
    let mut end = MAX_NOTE - ELLIPSIS.len();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ELLIPSIS}", &note[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_notes_are_cut_to_what_the_api_server_accepts() {
        assert_eq!(fit_note("short".into()), "short");
        let exact = "x".repeat(MAX_NOTE);
        assert_eq!(fit_note(exact.clone()), exact);
        let cut = fit_note("é".repeat(MAX_NOTE));
        assert!(cut.len() <= MAX_NOTE && cut.ends_with('…'), "{} bytes", cut.len());
        assert!(cut.trim_end_matches('…').chars().all(|c| c == 'é'));
    }
}

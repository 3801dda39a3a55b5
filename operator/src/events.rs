//! Kubernetes Events sent in the background, as client-go's recorder sends them: a reconcile
//! hands its notice over and goes on. An Event tells a user what happened; no step of a
//! reconcile depends on it, so none should wait on the API server for it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
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
    pub fn start(client: Client, reporter: Reporter, dropped: IntCounter) -> Self {
        let (queue, mut pending) = mpsc::channel::<(Event, ObjectReference)>(QUEUE);
        let events = futures::stream::poll_fn(move |cx| pending.poll_recv(cx));
        let recorders = Arc::new(Recorders::new(client, reporter));
        tokio::spawn(events.for_each_concurrent(SENDERS, move |(event, reference)| {
            let recorder = recorders.for_event(&event, &reference);
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

/// Where one object's Events of one type, action and reason go.
type SeriesKey = (Option<String>, EventType, String, String);

/// kube's recorder folds every Event with the same type, action, reason and object into one
/// series that keeps its first note, so "2 of 2 pods consuming" would stand for a later "1
/// of 1". An Event whose note differs from the last one of its kind gets a recorder of its
/// own and so starts a new series; repeats of one note still fold, as client-go folds them.
struct Recorders {
    client: Client,
    reporter: Reporter,
    last: Mutex<HashMap<SeriesKey, (Option<String>, Recorder)>>,
}

impl Recorders {
    /// Kinds of Events remembered before the oldest notes are forgotten (a new recorder
    /// then starts a new series, which costs one Event object more).
    const REMEMBERED: usize = 16_384;

    fn new(client: Client, reporter: Reporter) -> Self {
        Self { client, reporter, last: Mutex::new(HashMap::new()) }
    }

    fn for_event(&self, event: &Event, reference: &ObjectReference) -> Recorder {
        let key = (reference.uid.clone(), event.type_, event.action.clone(), event.reason.clone());
        let fresh = || Recorder::new(self.client.clone(), self.reporter.clone());
        let Ok(mut last) = self.last.lock() else { return fresh() };
        if let Some((note, recorder)) = last.get(&key)
            && *note == event.note
        {
            return recorder.clone();
        }
        if last.len() >= Self::REMEMBERED {
            last.clear();
        }
        let recorder = fresh();
        last.insert(key, (event.note.clone(), recorder.clone()));
        recorder
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

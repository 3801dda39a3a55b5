//! Kubernetes Events sent in the background, as client-go's recorder sends them: a reconcile
//! hands its notice over and goes on. An Event tells a user what happened; no step of a
//! reconcile depends on it, so none should wait on the API server for it.

use std::{
    collections::{HashMap, hash_map::DefaultHasher},
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        core::v1::ObjectReference,
        events::v1::{Event as K8sEvent, EventSeries},
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    runtime::events::{Event, EventType, Reporter},
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
        let writer = Arc::new(Writer::new(client, reporter));
        tokio::spawn(events.for_each_concurrent(SENDERS, move |(event, reference)| {
            let writer = writer.clone();
            async move {
                if let Err(e) = writer.publish(&event, &reference).await {
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

/// What makes Events one series: the object, type, action and reason.
type SeriesKey = (Option<String>, EventType, String, String);

/// The last Event of one series, as little of it as a repeat needs.
struct Series {
    /// Hash of the note: a repeat with another note starts a new series.
    note: u64,
    namespace: String,
    name: String,
    count: i32,
    last: Timestamp,
}

/// The series seen lately. Pure bookkeeping, kept apart from the writes.
#[derive(Default)]
struct SeriesTable {
    series: HashMap<SeriesKey, Series>,
}

impl SeriesTable {
    /// How long a series goes on without a repeat (client-go's and kube's figure).
    const TTL: SignedDuration = SignedDuration::from_mins(6);
    /// Series remembered before the expired ones are forgotten.
    const REMEMBERED: usize = 16_384;

    /// When `note` repeats the last Event of `key` within the TTL: that Event's namespace
    /// and name and the series' new count, counted.
    fn repeat(&mut self, key: &SeriesKey, note: u64, now: Timestamp) -> Option<(String, String, i32)> {
        let last = self.series.get_mut(key).filter(|s| s.note == note && s.last + Self::TTL > now)?;
        last.count += 1;
        last.last = now;
        Some((last.namespace.clone(), last.name.clone(), last.count))
    }

    /// Remembers the Event that started a series.
    fn started(&mut self, key: SeriesKey, note: u64, namespace: String, name: String, now: Timestamp) {
        if self.series.len() >= Self::REMEMBERED {
            self.series.retain(|_, s| s.last + Self::TTL > now);
        }
        self.series.insert(key, Series { note, namespace, name, count: 1, last: now });
    }
}

/// Writes Events the way client-go's recorder does: the first of a series is created, each
/// repeat of the same note within [`SeriesTable::TTL`] raises the series' count. kube's recorder
/// folds Events of one object, type, action and reason whatever their note, so "2 of 2
/// pods consuming" would stand for a later "1 of 1"; and it keeps the whole Event of each
/// series. This keeps a hash of the note, the Event's name and its count.
struct Writer {
    client: Client,
    reporter: Reporter,
    series: Mutex<SeriesTable>,
}

impl Writer {
    fn new(client: Client, reporter: Reporter) -> Self {
        Self { client, reporter, series: Mutex::new(SeriesTable::default()) }
    }

    async fn publish(&self, event: &Event, reference: &ObjectReference) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = (reference.uid.clone(), event.type_, event.action.clone(), event.reason.clone());
        let note = note_hash(event.note.as_deref());
        let repeat = self.series.lock().ok().and_then(|mut series| series.repeat(&key, note, now));
        if let Some((namespace, name, count)) = repeat {
            let series = EventSeries { count, last_observed_time: MicroTime(now) };
            let patch = K8sEvent { series: Some(series), ..K8sEvent::default() };
            let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
            events.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            return Ok(());
        }
        let created = first_of_series(event, reference, &self.reporter, now);
        let namespace = created.metadata.namespace.clone().unwrap_or_default();
        let name = created.metadata.name.clone().unwrap_or_default();
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        events.create(&PostParams::default(), &created).await?;
        if let Ok(mut series) = self.series.lock() {
            series.started(key, note, namespace, name, now);
        }
        Ok(())
    }
}

fn note_hash(note: Option<&str>) -> u64 {
    let mut hasher = DefaultHasher::new();
    note.hash(&mut hasher);
    hasher.finish()
}

/// The Event that starts a series, named as kube and client-go name them: the object's
/// name and the time in hex. Events of a cluster-scoped object go to `default`.
fn first_of_series(event: &Event, reference: &ObjectReference, reporter: &Reporter, now: Timestamp) -> K8sEvent {
    let namespace = reference.namespace.clone().unwrap_or_else(|| "default".into());
    let name = format!("{}.{:x}", reference.name.as_deref().unwrap_or(&reporter.controller), now.as_nanosecond());
    K8sEvent {
        metadata: ObjectMeta { namespace: Some(namespace), name: Some(name), ..ObjectMeta::default() },
        action: Some(event.action.clone()),
        reason: Some(event.reason.clone()),
        note: event.note.clone(),
        type_: Some(match event.type_ {
            EventType::Normal => "Normal".into(),
            EventType::Warning => "Warning".into(),
        }),
        event_time: Some(MicroTime(now)),
        regarding: Some(reference.clone()),
        related: event.secondary.clone(),
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(reporter.instance.clone().unwrap_or_else(|| reporter.controller.clone())),
        ..K8sEvent::default()
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

    fn key(uid: &str) -> SeriesKey {
        (Some(uid.to_owned()), EventType::Normal, "Reconcile".into(), "Running".into())
    }

    #[test]
    fn a_repeated_note_counts_and_another_note_starts_a_new_series() {
        let (mut table, now) = (SeriesTable::default(), Timestamp::now());
        let (two_pods, one_pod) = (note_hash(Some("2 of 2")), note_hash(Some("1 of 1")));
        assert_eq!(table.repeat(&key("a"), two_pods, now), None, "nothing seen yet");
        table.started(key("a"), two_pods, "ns".into(), "a.1".into(), now);
        assert_eq!(table.repeat(&key("a"), two_pods, now), Some(("ns".into(), "a.1".into(), 2)));
        assert_eq!(table.repeat(&key("a"), two_pods, now), Some(("ns".into(), "a.1".into(), 3)));
        assert_eq!(table.repeat(&key("a"), one_pod, now), None, "a new note is a new Event");
        assert_eq!(table.repeat(&key("b"), two_pods, now), None, "another object");
        table.started(key("a"), one_pod, "ns".into(), "a.2".into(), now);
        assert_eq!(table.repeat(&key("a"), two_pods, now), None, "the old note's series is over");
    }

    #[test]
    fn a_series_ends_after_its_ttl_and_expired_ones_are_forgotten_when_full() {
        let (mut table, now) = (SeriesTable::default(), Timestamp::now());
        let note = note_hash(None);
        table.started(key("a"), note, "ns".into(), "a.1".into(), now);
        let later = now + SeriesTable::TTL + SignedDuration::from_secs(1);
        assert_eq!(table.repeat(&key("a"), note, later), None);
        for n in 0..SeriesTable::REMEMBERED {
            table.started(key(&n.to_string()), note, "ns".into(), n.to_string(), now);
        }
        table.started(key("fresh"), note, "ns".into(), "fresh".into(), later);
        assert_eq!(table.series.len(), 1, "the expired series went when the table was full");
    }

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

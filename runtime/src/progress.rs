//! Where each partition's progress (event time seen, position) is kept between runs, so a
//! restarted or reassigned partition drops the replayed records of windows it already
//! emitted. It is written before the offsets are committed: a crash between the two then
//! replays from older offsets with newer progress, which only drops records of windows that
//! were emitted (the reverse order could re-emit a window in part).
//!
//! With `checkpoint.storage` set to a `file://` URL the progress lives there (one small file
//! per partition); otherwise in the Kafka commit metadata, which Apache Kafka returns but some
//! Kafka-protocol brokers drop. Object-store URLs (`s3://`, ...) arrive with checkpoints.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// A partition's progress at a commit.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Format version.
    pub v: u32,
    /// Newest event time seen.
    pub max_event_time: Option<i64>,
    /// Next offset to process.
    pub position: i64,
    /// The offset committed with it.
    pub committed: i64,
}

/// Progress files under `<checkpoint storage>/<group>/progress/`.
#[derive(Debug, Clone)]
pub struct ProgressStore {
    dir: PathBuf,
}

/// Progress could not be written or read.
#[derive(Debug, thiserror::Error)]
#[error("progress file {path}: {source}")]
pub struct ProgressError {
    path: PathBuf,
    source: std::io::Error,
}

impl ProgressStore {
    /// The store for a `file://` checkpoint URL; `None` for other schemes or no checkpoint.
    pub fn for_storage(storage: Option<&str>, group: &str) -> Option<Self> {
        let path = storage?.strip_prefix("file://")?;
        Some(Self { dir: Path::new(path).join(sanitize(group)).join("progress") })
    }

    fn file(&self, topic: &str, partition: i32) -> PathBuf {
        self.dir.join(format!("{}-{partition}.json", sanitize(topic)))
    }

    /// Writes a partition's progress durably (write, fsync, rename).
    pub fn save(&self, topic: &str, partition: i32, progress: &Progress) -> Result<(), ProgressError> {
        let path = self.file(topic, partition);
        let error = |source| ProgressError { path: path.clone(), source };
        std::fs::create_dir_all(&self.dir).map_err(error)?;
        let temporary = path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&temporary).map_err(error)?;
        let text = serde_json::to_vec(progress).map_err(|e| error(e.into()))?;
        file.write_all(&text).and_then(|()| file.sync_all()).map_err(error)?;
        std::fs::rename(&temporary, &path).map_err(error)
    }

    /// A partition's last saved progress, if any.
    pub fn load(&self, topic: &str, partition: i32) -> Result<Option<Progress>, ProgressError> {
        let path = self.file(topic, partition);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| ProgressError { path, source: e.into() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ProgressError { path, source }),
        }
    }
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_round_trips_per_partition() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let store = ProgressStore::for_storage(Some(&url), "shop.spend").unwrap();
        assert_eq!(store.load("payments", 0).unwrap(), None);
        let progress = Progress { v: 1, max_event_time: Some(42), position: 100, committed: 90 };
        store.save("payments", 0, &progress).unwrap();
        assert_eq!(store.load("payments", 0).unwrap(), Some(progress));
        assert_eq!(store.load("payments", 1).unwrap(), None);
    }

    #[test]
    fn only_file_urls_have_a_store_for_now() {
        assert!(ProgressStore::for_storage(Some("s3://bucket/x"), "g").is_none());
        assert!(ProgressStore::for_storage(None, "g").is_none());
    }
}

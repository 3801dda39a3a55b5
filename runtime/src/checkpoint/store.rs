//! Where snapshots live: one `object_store` for `file://`, `s3://`, `gs://` and `az://`
//! URLs, with a fixed layout under the job's folder:
//!
//! ```text
//! <storage>/<group>/checkpoints/<run>/<topic>/<partition>/<checkpoint id>.arrow
//! <storage>/<group>/savepoints/<savepoint id>/<topic>/<partition>.arrow
//! <storage>/<group>/savepoints/<savepoint id>/manifest-<instance>.json
//! ```
//!
//! A run is the checkpoint lineage of one start: `default`, or the savepoint it restored from,
//! so a crash after restoring a savepoint resumes from that lineage's newer checkpoints and
//! never from another's.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, local::LocalFileSystem, path::Path};

use super::format::{FormatError, PartitionSnapshot};

/// Storage failed, or what it held could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage URL is not one the runtime can use.
    #[error("checkpoint.storage `{url}`: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The object store failed.
    #[error("{location}: {source}")]
    Io {
        /// The object.
        location: String,
        /// The cause.
        source: object_store::Error,
    },
    /// An object's content was unreadable.
    #[error("{location}: {source}")]
    Format {
        /// The object.
        location: String,
        /// The cause.
        source: FormatError,
    },
}

/// The job's checkpoint folder.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    /// The local store of `file://` storage: written objects are synced to disk, since
    /// offsets are committed on the promise that the state is durable.
    local: Option<Arc<LocalFileSystem>>,
    /// `<storage>/<group>` within the store.
    root: Path,
    /// The storage URL of `root`, for messages and savepoint paths.
    url: String,
}

impl CheckpointStore {
    /// The store for `storage` (a `checkpoint.storage` URL), with the job's folder `group`.
    /// Cloud credentials and endpoints come from the environment, as each SDK reads them
    /// (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT`, `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`, ...).
    pub fn open(storage: &str, group: &str) -> Result<Self, StoreError> {
        let opened = weir_storage::open(storage, true).map_err(|e| match e {
            weir_storage::StorageError::Url { url, reason } => StoreError::Url { url, reason },
            other => StoreError::Url { url: storage.to_owned(), reason: other.to_string() },
        })?;
        let folder = segment(group);
        let root = child(&opened.prefix, &folder);
        Ok(Self {
            store: opened.store,
            local: opened.local,
            root,
            url: format!("{}/{folder}", storage.trim_end_matches('/')),
        })
    }

    /// The store of the savepoint at `url` (a savepoint's folder, as [`Self::savepoint_url`]
    /// gives it: `<storage>/<job folder>/savepoints/<id>`) and its id, to restore from
    /// another job's savepoint.
    pub fn of_savepoint(url: &str) -> Result<(Self, String), StoreError> {
        let bad = |reason: &str| StoreError::Url { url: url.to_owned(), reason: reason.to_owned() };
        let layout = "not a savepoint's folder: <storage>/<job folder>/savepoints/<id>";
        let (folder, id) = url.trim_end_matches('/').rsplit_once("/savepoints/").ok_or_else(|| bad(layout))?;
        let (storage, group) = folder.rsplit_once('/').ok_or_else(|| bad(layout))?;
        if id.is_empty() || id.contains('/') || group.is_empty() {
            return Err(bad(layout));
        }
        Ok((Self::open(storage, group)?, id.to_owned()))
    }

    fn checkpoint_dir(&self, run: &str, topic: &str, partition: i32) -> Path {
        let mut dir = child(&self.root, "checkpoints");
        for part in [segment(run), segment(topic), partition.to_string()] {
            dir = child(&dir, &part);
        }
        dir
    }

    fn savepoint_dir(&self, id: &str) -> Path {
        child(&child(&self.root, "savepoints"), &segment(id))
    }

    /// The URL of a savepoint's folder, as reported to users.
    pub fn savepoint_url(&self, id: &str) -> String {
        format!("{}/savepoints/{}", self.url, segment(id))
    }

    /// Writes a partition's snapshot as checkpoint `snapshot.header.checkpoint` of `run`.
    pub async fn put_checkpoint(&self, run: &str, snapshot: &PartitionSnapshot) -> Result<(), StoreError> {
        let header = &snapshot.header;
        let dir = self.checkpoint_dir(run, &header.topic, header.partition);
        let location = child(&dir, &format!("{:020}.arrow", header.checkpoint));
        self.put(&location, snapshot).await
    }

    /// Checkpoint ids of a partition in `run`, oldest first.
    pub async fn checkpoint_ids(&self, run: &str, topic: &str, partition: i32) -> Result<Vec<u64>, StoreError> {
        let dir = self.checkpoint_dir(run, topic, partition);
        let objects: Vec<_> = self.store.list(Some(&dir)).try_collect().await.map_err(|e| self.io(&dir, e))?;
        let mut ids: Vec<u64> =
            objects.iter().filter_map(|o| o.location.filename()?.strip_suffix(".arrow")?.parse().ok()).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// A partition's checkpoint `id` of `run`.
    pub async fn get_checkpoint(
        &self,
        run: &str,
        topic: &str,
        partition: i32,
        id: u64,
    ) -> Result<PartitionSnapshot, StoreError> {
        let location = child(&self.checkpoint_dir(run, topic, partition), &format!("{id:020}.arrow"));
        self.get(&location).await?.ok_or_else(|| self.io(&location, not_found(&location)))
    }

    /// Deletes a partition's checkpoint `id` of `run`.
    pub async fn delete_checkpoint(&self, run: &str, topic: &str, partition: i32, id: u64) -> Result<(), StoreError> {
        let location = child(&self.checkpoint_dir(run, topic, partition), &format!("{id:020}.arrow"));
        match self.store.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.io(&location, e)),
        }
    }

    /// Writes a partition's snapshot into savepoint `id`.
    pub async fn put_savepoint(&self, id: &str, snapshot: &PartitionSnapshot) -> Result<(), StoreError> {
        let header = &snapshot.header;
        let topic = child(&self.savepoint_dir(id), &segment(&header.topic));
        let location = child(&topic, &format!("{}.arrow", header.partition));
        self.put(&location, snapshot).await
    }

    /// A partition's snapshot in savepoint `id`, if the savepoint has that partition.
    pub async fn get_savepoint(
        &self,
        id: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<PartitionSnapshot>, StoreError> {
        let topic = child(&self.savepoint_dir(id), &segment(topic));
        self.get(&child(&topic, &format!("{partition}.arrow"))).await
    }

    /// Writes the manifest one instance contributes to savepoint `id` (written last: a
    /// savepoint whose manifests are all present is complete).
    pub async fn put_manifest(&self, id: &str, instance: &str, manifest: &[u8]) -> Result<(), StoreError> {
        let location = child(&self.savepoint_dir(id), &format!("manifest-{}.json", segment(instance)));
        self.store.put(&location, PutPayload::from(manifest.to_vec())).await.map_err(|e| self.io(&location, e))?;
        self.sync(&location).await
    }

    async fn put(&self, location: &Path, snapshot: &PartitionSnapshot) -> Result<(), StoreError> {
        let bytes =
            snapshot.encode().map_err(|source| StoreError::Format { location: location.to_string(), source })?;
        self.store.put(location, PutPayload::from(bytes)).await.map_err(|e| self.io(location, e))?;
        self.sync(location).await
    }

    /// On local storage, flushes a written object and its folder entry to disk (object
    /// stores make a completed put durable themselves).
    async fn sync(&self, location: &Path) -> Result<(), StoreError> {
        let Some(local) = &self.local else { return Ok(()) };
        let file = local.path_to_filesystem(location).map_err(|e| self.io(location, e))?;
        let synced = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::File::open(&file)?.sync_all()?;
            match file.parent() {
                Some(dir) => std::fs::File::open(dir)?.sync_all(),
                None => Ok(()),
            }
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|result| result);
        synced
            .map_err(|e| self.io(location, object_store::Error::Generic { store: "LocalFileSystem", source: e.into() }))
    }

    async fn get(&self, location: &Path) -> Result<Option<PartitionSnapshot>, StoreError> {
        let bytes = match self.store.get(location).await {
            Ok(result) => result.bytes().await.map_err(|e| self.io(location, e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.io(location, e)),
        };
        PartitionSnapshot::decode(&bytes)
            .map(Some)
            .map_err(|source| StoreError::Format { location: location.to_string(), source })
    }

    fn io(&self, location: &Path, source: object_store::Error) -> StoreError {
        StoreError::Io { location: format!("{}/{}", self.url, location), source }
    }
}

fn not_found(location: &Path) -> object_store::Error {
    object_store::Error::NotFound { path: location.to_string(), source: "listed but gone".into() }
}

fn child(path: &Path, part: &str) -> Path {
    path.parts().chain(std::iter::once(object_store::path::PathPart::from(part))).collect()
}

/// A name as one path segment: characters object stores and file systems all accept.
fn segment(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{super::format::SnapshotHeader, *};

    fn snapshot(partition: i32, checkpoint: u64) -> PartitionSnapshot {
        PartitionSnapshot {
            header: SnapshotHeader {
                version: 1,
                checkpoint,
                topic: "pay/ments".into(),
                partition,
                position: checkpoint as i64 * 10,
                max_event_time: None,
                offsets: BTreeMap::new(),
                created_at: String::new(),
                upstream: BTreeMap::new(),
                marks: BTreeMap::new(),
            },
            state: Default::default(),
        }
    }

    #[tokio::test]
    async fn checkpoints_are_listed_read_and_deleted_per_run_and_partition() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(&format!("file://{}", dir.path().display()), "shop.spend").unwrap();
        for id in [3, 1, 2] {
            store.put_checkpoint("default", &snapshot(0, id)).await.unwrap();
        }
        store.put_checkpoint("default", &snapshot(1, 9)).await.unwrap();
        store.put_checkpoint("sp-1", &snapshot(0, 8)).await.unwrap();
        assert_eq!(store.checkpoint_ids("default", "pay/ments", 0).await.unwrap(), [1, 2, 3]);
        assert_eq!(store.get_checkpoint("default", "pay/ments", 0, 2).await.unwrap().header.position, 20);
        store.delete_checkpoint("default", "pay/ments", 0, 1).await.unwrap();
        assert_eq!(store.checkpoint_ids("default", "pay/ments", 0).await.unwrap(), [2, 3]);
        assert_eq!(store.checkpoint_ids("sp-1", "pay/ments", 0).await.unwrap(), [8]);
        assert!(dir.path().join("shop.spend/checkpoints/default/pay_ments/1").is_dir(), "the documented layout");
    }

    #[tokio::test]
    async fn savepoints_hold_each_partition_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(&format!("file://{}", dir.path().display()), "g").unwrap();
        store.put_savepoint("sp-7", &snapshot(4, 5)).await.unwrap();
        assert_eq!(store.get_savepoint("sp-7", "pay/ments", 4).await.unwrap().unwrap().header.checkpoint, 5);
        assert!(store.get_savepoint("sp-7", "pay/ments", 5).await.unwrap().is_none());
        assert!(store.savepoint_url("sp-7").ends_with("/g/savepoints/sp-7"));
    }

    #[tokio::test]
    async fn another_jobs_savepoint_is_found_by_its_url() {
        let dir = tempfile::tempdir().unwrap();
        let storage = format!("file://{}", dir.path().display());
        let theirs = CheckpointStore::open(&storage, "other.job").unwrap();
        theirs.put_savepoint("sp-9", &snapshot(2, 7)).await.unwrap();
        let (store, id) = CheckpointStore::of_savepoint(&format!("{}/", theirs.savepoint_url("sp-9"))).unwrap();
        assert_eq!(id, "sp-9");
        assert_eq!(store.get_savepoint(&id, "pay/ments", 2).await.unwrap().unwrap().header.checkpoint, 7);
        for bad in
            [format!("{storage}/other.job"), format!("{storage}/other.job/savepoints/"), "file:///savepoints/x".into()]
        {
            let error = CheckpointStore::of_savepoint(&bad).map(|_| ()).unwrap_err().to_string();
            assert!(error.contains(&bad), "{error}");
        }
    }

    #[test]
    fn unknown_schemes_are_refused_with_the_url() {
        let error = CheckpointStore::open("ftp://host/x", "g").unwrap_err().to_string();
        assert!(error.contains("ftp://host/x") && error.contains("unsupported scheme"), "{error}");
    }
}

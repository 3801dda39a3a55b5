//! Checkpoint storage URLs opened as object stores: `file://`, `s3://`, `gs://` and `az://`
//! (`abfs://`, `abfss://`). The runtime writes checkpoints and savepoints through [`open`];
//! the operator removes a savepoint's folder with [`delete_folder`]. Cloud credentials and
//! endpoints come from the environment, as each SDK reads them (`AWS_ACCESS_KEY_ID`,
//! `AWS_ENDPOINT`, `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`, ...).

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::{
    ObjectStore, aws::AmazonS3Builder, azure::MicrosoftAzureBuilder, gcp::GoogleCloudStorageBuilder,
    local::LocalFileSystem, path::Path,
};
use url::Url;

/// A storage URL that cannot be used, or a store that failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The URL is not one Weir can open.
    #[error("`{url}`: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The object store failed.
    #[error("`{url}`: {source}")]
    Store {
        /// The URL worked on.
        url: String,
        /// The cause.
        source: object_store::Error,
    },
}

/// A storage URL, opened.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The same store when it is the local file system, whose writes callers may need to sync.
    pub local: Option<Arc<LocalFileSystem>>,
    /// Where the URL points within the store.
    pub prefix: Path,
}

/// Opens `storage`. A `file://` folder is created when `create` is set, and must exist otherwise.
pub fn open(storage: &str, create: bool) -> Result<Opened, StorageError> {
    let bad = |reason: String| StorageError::Url { url: storage.to_owned(), reason };
    let url = Url::parse(storage).map_err(|e| bad(e.to_string()))?;
    let cloud = |store: Arc<dyn ObjectStore>| Opened { store, local: None, prefix: Path::from(url.path()) };
    match url.scheme() {
        "file" => {
            let dir = url.to_file_path().map_err(|()| bad("not an absolute file path".into()))?;
            if create {
                std::fs::create_dir_all(&dir).map_err(|e| bad(format!("creating {}: {e}", dir.display())))?;
            } else if !dir.is_dir() {
                return Err(bad(format!("{} is not a folder here", dir.display())));
            }
            let local = Arc::new(LocalFileSystem::new_with_prefix(&dir).map_err(|e| bad(e.to_string()))?);
            Ok(Opened { store: local.clone(), local: Some(local), prefix: Path::default() })
        }
        "s3" | "s3a" => {
            Ok(cloud(Arc::new(AmazonS3Builder::from_env().with_url(storage).build().map_err(|e| bad(e.to_string()))?)))
        }
        "gs" => Ok(cloud(Arc::new(
            GoogleCloudStorageBuilder::from_env().with_url(storage).build().map_err(|e| bad(e.to_string()))?,
        ))),
        "az" | "abfs" | "abfss" => Ok(cloud(Arc::new(
            MicrosoftAzureBuilder::from_env().with_url(storage).build().map_err(|e| bad(e.to_string()))?,
        ))),
        other => Err(bad(format!("unsupported scheme `{other}`"))),
    }
}

/// Deletes every object under the folder at `url`; returns how many there were. A local
/// folder that is gone already holds nothing.
pub async fn delete_folder(url: &str) -> Result<usize, StorageError> {
    let local = Url::parse(url).ok().filter(|u| u.scheme() == "file").and_then(|u| u.to_file_path().ok());
    if local.as_ref().is_some_and(|dir| !dir.exists()) {
        return Ok(0);
    }
    let opened = open(url, false)?;
    let failed = |source| StorageError::Store { url: url.to_owned(), source };
    let prefix = Some(&opened.prefix).filter(|p| !p.as_ref().is_empty());
    let locations = opened.store.list(prefix).map_ok(|meta| meta.location).boxed();
    let deleted: Vec<Path> = opened.store.delete_stream(locations).try_collect().await.map_err(failed)?;
    if let Some(dir) = local {
        // Objects are files there; the folders they were in go too.
        std::fs::remove_dir_all(&dir).map_err(|e| StorageError::Url {
            url: url.to_owned(),
            reason: format!("removing {}: {e}", dir.display()),
        })?;
    }
    Ok(deleted.len())
}

#[cfg(test)]
mod tests {
    use object_store::{ObjectStoreExt, PutPayload};

    use super::*;

    #[tokio::test]
    async fn a_folder_is_deleted_whole_and_a_deleted_one_holds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = format!("file://{}", dir.path().display());
        let opened = open(&root, true).unwrap();
        for object in
            ["g/savepoints/sp-1/t/0.arrow", "g/savepoints/sp-1/manifest-a.json", "g/savepoints/sp-2/t/0.arrow"]
        {
            opened.store.put(&Path::from(object), PutPayload::from_static(b"x")).await.unwrap();
        }
        let folder = format!("{root}/g/savepoints/sp-1");
        assert_eq!(delete_folder(&folder).await.unwrap(), 2);
        assert!(!dir.path().join("g/savepoints/sp-1").exists());
        assert!(dir.path().join("g/savepoints/sp-2/t/0.arrow").exists(), "the other savepoint stays");
        assert_eq!(delete_folder(&folder).await.unwrap(), 0, "deleting again is no error");
    }

    #[test]
    fn unknown_schemes_and_missing_folders_are_refused_with_the_url() {
        let error = open("ftp://host/x", true).unwrap_err().to_string();
        assert!(error.contains("ftp://host/x") && error.contains("unsupported scheme"), "{error}");
        let error = open("file:///no/such/weir/folder", false).unwrap_err().to_string();
        assert!(error.contains("not a folder here"), "{error}");
    }
}

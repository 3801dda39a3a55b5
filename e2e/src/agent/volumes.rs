//! Volumes as local folders: ConfigMap, Secret, downward API, emptyDir and projected
//! volumes (with service-account tokens from the TokenRequest API) are written under
//! `<pod-dir>/volumes/<name>/`, and since a local process cannot see a `mountPath`,
//! arguments and env values that point into a mount are rewritten to the folder.

use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use k8s_openapi::{
    ByteString,
    api::{
        authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
        core::v1::{
            ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, Secret, ServiceAccount,
            ServiceAccountTokenProjection, Volume,
        },
    },
};
use kube::{Api, Client, api::PostParams};

use super::launch::{self, PodInfo};

/// A token's lifetime when its projection names none, as the API defaults it.
const DEFAULT_TOKEN_LIFETIME: i64 = 3600;

/// Why a pod's volumes could not be set up (the pod waits and retries, as a kubelet would).
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// Reading a ConfigMap or Secret, or requesting a token, failed.
    #[error("reading {kind} {name}: {source}")]
    Api {
        /// ConfigMap, Secret or ServiceAccount token.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The cause.
        source: kube::Error,
    },
    /// A referenced ConfigMap or Secret, or one of its keys, does not exist.
    #[error("{kind} {name} not found")]
    Missing {
        /// ConfigMap, Secret or key.
        kind: &'static str,
        /// What is missing.
        name: String,
    },
    /// A downward API file names a field the agent does not know.
    #[error("downward API file {path}: unsupported fieldRef {field:?}")]
    Field {
        /// The file's path in the volume.
        path: String,
        /// The field it names.
        field: String,
    },
    /// Writing a file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The folder that stands for each volume, by volume name.
pub type VolumeDirs = BTreeMap<String, PathBuf>;

/// A pod's volumes as written, and when they must be written again.
#[derive(Debug, Clone)]
pub struct Materialized {
    /// Each volume's folder.
    pub dirs: VolumeDirs,
    /// When the shortest-lived token reaches 80% of its life, as a kubelet refreshes it.
    pub token_refresh: Option<SystemTime>,
}

/// Writes the pod's volumes under `pod.dir/volumes/` and returns their folders. Volume
/// kinds without a local meaning (hostPath, PVCs, …) get an empty folder. Writing again
/// replaces each file atomically, so a process never reads half a token.
pub async fn materialize(client: &Client, pod: &PodInfo, volumes: &[Volume]) -> Result<Materialized, VolumeError> {
    let mut written = Materialized { dirs: VolumeDirs::new(), token_refresh: None };
    let sources = Sources { client, pod };
    for volume in volumes {
        let dir = pod.dir.join("volumes").join(&volume.name);
        create_dir(&dir)?;
        if let Some(source) = &volume.config_map {
            let optional = source.optional.unwrap_or(false);
            let files = sources.config_map(&source.name, optional).await?;
            write_files(&dir, files, source.items.as_deref(), optional, mode(source.default_mode, 0o644))?;
        } else if let Some(source) = &volume.secret {
            let optional = source.optional.unwrap_or(false);
            let name = source.secret_name.clone().unwrap_or_default();
            let files = sources.secret(&name, optional).await?;
            write_files(&dir, files, source.items.as_deref(), optional, mode(source.default_mode, 0o644))?;
        } else if let Some(source) = &volume.downward_api {
            let default_mode = mode(source.default_mode, 0o644);
            write_downward_api(&dir, pod, source.items.as_deref().unwrap_or_default(), default_mode)?;
        } else if let Some(projected) = &volume.projected {
            let default_mode = mode(projected.default_mode, 0o644);
            for projection in projected.sources.iter().flatten() {
                if let Some(source) = &projection.config_map {
                    let optional = source.optional.unwrap_or(false);
                    let files = sources.config_map(&source.name, optional).await?;
                    write_files(&dir, files, source.items.as_deref(), optional, default_mode)?;
                } else if let Some(source) = &projection.secret {
                    let optional = source.optional.unwrap_or(false);
                    let files = sources.secret(&source.name, optional).await?;
                    write_files(&dir, files, source.items.as_deref(), optional, default_mode)?;
                } else if let Some(source) = &projection.downward_api {
                    write_downward_api(&dir, pod, source.items.as_deref().unwrap_or_default(), default_mode)?;
                } else if let Some(source) = &projection.service_account_token {
                    let (token, refresh) = sources.token(source).await?;
                    let file = dir.join(&source.path);
                    write_file(&file, token.as_bytes(), default_mode)?;
                    pod.ownership.own_token(&file).map_err(|source| VolumeError::Io { path: file.clone(), source })?;
                    written.token_refresh = Some(written.token_refresh.map_or(refresh, |t| t.min(refresh)));
                }
            }
        }
        let read_only = volume.config_map.is_some()
            || volume.secret.is_some()
            || volume.downward_api.is_some()
            || volume.projected.is_some();
        if !read_only {
            // A scratch folder any user of the pod may write, as the kubelet makes an emptyDir.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                .map_err(|source| VolumeError::Io { path: dir.clone(), source })?;
        }
        pod.ownership.share(&dir, !read_only).map_err(|source| VolumeError::Io { path: dir.clone(), source })?;
        written.dirs.insert(volume.name.clone(), dir);
    }
    Ok(written)
}

fn mode(mode: Option<i32>, default: u32) -> u32 {
    mode.and_then(|m| u32::try_from(m).ok()).unwrap_or(default)
}

/// Where the API objects behind a pod's volumes are read.
struct Sources<'a> {
    client: &'a Client,
    pod: &'a PodInfo,
}

impl Sources<'_> {
    async fn config_map(&self, name: &str, optional: bool) -> Result<BTreeMap<String, Vec<u8>>, VolumeError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.pod.namespace);
        Ok(get(&api, "ConfigMap", name, optional)
            .await?
            .map(|cm| {
                let text = cm.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes()));
                let binary = cm.binary_data.unwrap_or_default().into_iter().map(|(k, ByteString(v))| (k, v));
                text.chain(binary).collect()
            })
            .unwrap_or_default())
    }

    async fn secret(&self, name: &str, optional: bool) -> Result<BTreeMap<String, Vec<u8>>, VolumeError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.pod.namespace);
        let mut files = BTreeMap::new();
        if let Some(secret) = get(&api, "Secret", name, optional).await? {
            files.extend(secret.data.unwrap_or_default().into_iter().map(|(k, ByteString(v))| (k, v)));
            files.extend(secret.string_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())));
        }
        Ok(files)
    }

    /// A token for the pod's service account, bound to the pod (it stops working when the
    /// pod is deleted), and when to refresh it.
    async fn token(&self, source: &ServiceAccountTokenProjection) -> Result<(String, SystemTime), VolumeError> {
        let lifetime = source.expiration_seconds.unwrap_or(DEFAULT_TOKEN_LIFETIME);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: source.audience.iter().cloned().collect(),
                expiration_seconds: Some(lifetime),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(self.pod.name.clone()),
                    uid: Some(self.pod.uid.clone()),
                }),
            },
            ..TokenRequest::default()
        };
        let account = &self.pod.service_account;
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &self.pod.namespace);
        let error = |source| VolumeError::Api { kind: "ServiceAccount token", name: account.clone(), source };
        let response = api.create_token_request(account, &PostParams::default(), &request).await.map_err(error)?;
        let token = response.status.map(|s| s.token).unwrap_or_default();
        // The server may shorten the lifetime; refresh at 80% of what was asked for, at most.
        let granted = response.spec.expiration_seconds.unwrap_or(lifetime).max(1);
        let refresh = SystemTime::now() + Duration::from_secs(granted.unsigned_abs() * 4 / 5);
        Ok((token, refresh))
    }
}

async fn get<K>(api: &Api<K>, kind: &'static str, name: &str, optional: bool) -> Result<Option<K>, VolumeError>
where
    K: Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get_opt(name).await {
        Ok(Some(object)) => Ok(Some(object)),
        Ok(None) if optional => Ok(None),
        Ok(None) => Err(VolumeError::Missing { kind, name: name.to_owned() }),
        Err(source) => Err(VolumeError::Api { kind, name: name.to_owned(), source }),
    }
}

/// Writes each downward API file: a field's value, or all labels / annotations as
/// `key="value"` lines, as the kubelet formats them.
fn write_downward_api(
    dir: &Path,
    pod: &PodInfo,
    items: &[DownwardAPIVolumeFile],
    default_mode: u32,
) -> Result<(), VolumeError> {
    for item in items {
        let Some(field) = &item.field_ref else { continue };
        let lines =
            |map: &BTreeMap<String, String>| map.iter().map(|(k, v)| format!("{k}={v:?}\n")).collect::<String>();
        let value = match field.field_path.as_str() {
            "metadata.labels" => lines(&pod.labels),
            "metadata.annotations" => lines(&pod.annotations),
            path => launch::field_value(path, pod)
                .map_err(|_| VolumeError::Field { path: item.path.clone(), field: path.to_owned() })?,
        };
        write_file(&dir.join(&item.path), value.as_bytes(), mode(item.mode, default_mode))?;
    }
    Ok(())
}

/// Writes every key (or only `items`, key → path) as a file with `mode`.
fn write_files(
    dir: &Path,
    files: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    optional: bool,
    mode: u32,
) -> Result<(), VolumeError> {
    let selected: Vec<(String, &Vec<u8>, u32)> = match items {
        Some(items) => {
            let mut selected = Vec::new();
            for item in items {
                match files.get(&item.key) {
                    Some(bytes) => selected.push((item.path.clone(), bytes, self::mode(item.mode, mode))),
                    None if optional => {}
                    None => return Err(VolumeError::Missing { kind: "key", name: item.key.clone() }),
                }
            }
            selected
        }
        None => files.iter().map(|(k, v)| (k.clone(), v, mode)).collect(),
    };
    for (relative, bytes, mode) in selected {
        write_file(&dir.join(relative), bytes, mode)?;
    }
    Ok(())
}

/// Replaces `path` atomically: a temporary file beside it, renamed over it.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), VolumeError> {
    if let Some(parent) = path.parent() {
        create_dir(parent)?;
    }
    let temporary = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    let io = |source| VolumeError::Io { path: path.to_path_buf(), source };
    let _ = std::fs::remove_file(&temporary);
    std::fs::write(&temporary, bytes).map_err(io)?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    std::fs::rename(&temporary, path).map_err(io)
}

fn create_dir(dir: &Path) -> Result<(), VolumeError> {
    std::fs::create_dir_all(dir).map_err(|source| VolumeError::Io { path: dir.to_path_buf(), source })
}

/// A container's mounts, for rewriting paths: each mountPath with its local folder, longest
/// first so nested mounts win, and optionally a folder that mirrors the container's view of
/// the filesystem (`<root>/<mountPath>` links to the volume), so a path that is a parent of
/// mounts (`--secrets-dir=/var/run/secrets` with mounts below it) has a local meaning too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mounts {
    table: Vec<(String, PathBuf)>,
    root: Option<PathBuf>,
}

impl Mounts {
    /// The container's mounts of known volumes (a mount of `/` is left out).
    pub fn new(container: &Container, dirs: &VolumeDirs) -> Self {
        let mut table: Vec<(String, PathBuf)> = container
            .volume_mounts
            .iter()
            .flatten()
            .filter_map(|m| {
                let dir = dirs.get(&m.name)?;
                let local = match m.sub_path.as_deref() {
                    Some(sub) if !sub.is_empty() => dir.join(sub),
                    _ => dir.clone(),
                };
                let path = m.mount_path.trim_end_matches('/');
                (!path.is_empty()).then(|| (path.to_owned(), local))
            })
            .collect();
        table.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        Self { table, root: None }
    }

    /// Maps the container's termination message path (the kubelet mounts one file there per
    /// container) to `local`, so a program writing it writes `local`.
    pub fn with_termination_message(mut self, container_path: &str, local: PathBuf) -> Self {
        self.table.push((container_path.to_owned(), local));
        self.table.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        self
    }

    /// Builds the mirror folder at `root`: parent folders of each mount path, and a link
    /// named like the mount to its volume (a mount nested in another mount is reached
    /// through the direct rewrite only).
    pub fn with_root(mut self, root: PathBuf) -> Result<Self, VolumeError> {
        let mut linked: Vec<&str> = Vec::new();
        let mut by_length: Vec<&(String, PathBuf)> = self.table.iter().collect();
        by_length.sort_by_key(|(path, _)| path.len());
        for (path, local) in by_length {
            if linked.iter().any(|outer| within(path, outer)) {
                continue;
            }
            let link = root.join(path.trim_start_matches('/'));
            if let Some(parent) = link.parent() {
                create_dir(parent)?;
            }
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(local, &link)
                    .map_err(|source| VolumeError::Io { path: link.clone(), source })?;
            }
            linked.push(path);
        }
        self.root = Some(root);
        Ok(self)
    }

    /// `value` with a leading mount path replaced by its local folder, or a leading parent
    /// of mount paths by its mirror folder; a `--flag=PATH` value is rewritten after its `=`
    /// too, since that is how programs are usually given paths.
    pub fn rewrite(&self, value: &str) -> String {
        if let Some(rewritten) = self.rewrite_path(value) {
            return rewritten;
        }
        if let Some((flag, path)) = value.split_once('=')
            && let Some(rewritten) = self.rewrite_path(path)
        {
            return format!("{flag}={rewritten}");
        }
        value.to_owned()
    }

    fn rewrite_path(&self, value: &str) -> Option<String> {
        let inside = self.table.iter().find_map(|(mount, local)| {
            let rest = value.strip_prefix(mount.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then(|| format!("{}{rest}", local.display()))
        });
        if inside.is_some() {
            return inside;
        }
        let root = self.root.as_ref()?;
        let path = value.trim_end_matches('/');
        let parent_of_mount = path.starts_with('/') && self.table.iter().any(|(mount, _)| within(mount, path));
        parent_of_mount.then(|| root.join(path.trim_start_matches('/')).display().to_string())
    }
}

/// Whether `path` lies strictly below `parent` (`/a/b` below `/a`, not `/ab`).
fn within(path: &str, parent: &str) -> bool {
    !parent.is_empty() && path.strip_prefix(parent).is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::VolumeMount;

    use super::*;

    fn container() -> Container {
        Container {
            volume_mounts: Some(vec![
                VolumeMount { name: "config".into(), mount_path: "/etc/weir/".into(), ..VolumeMount::default() },
                VolumeMount { name: "tls".into(), mount_path: "/etc/weir/tls".into(), ..VolumeMount::default() },
                VolumeMount {
                    name: "config".into(),
                    mount_path: "/job.json".into(),
                    sub_path: Some("job.json".into()),
                    ..VolumeMount::default()
                },
                VolumeMount { name: "unknown".into(), mount_path: "/nowhere".into(), ..VolumeMount::default() },
                VolumeMount { name: "creds".into(), mount_path: "/run/secrets/creds".into(), ..VolumeMount::default() },
            ]),
            ..Container::default()
        }
    }

    fn dirs(base: &Path) -> VolumeDirs {
        ["config", "tls", "creds"].into_iter().map(|v| (v.to_owned(), base.join("volumes").join(v))).collect()
    }

    fn mounts() -> Mounts {
        Mounts::new(&container(), &dirs(Path::new("/p")))
    }

    fn rewrite(value: &str, mounts: &Mounts) -> String {
        mounts.rewrite(value)
    }

    #[test]
    fn the_longest_mount_path_wins() {
        let m = mounts();
        assert_eq!(rewrite("/etc/weir/tls/ca.crt", &m), "/p/volumes/tls/ca.crt");
        assert_eq!(rewrite("/etc/weir/job.yaml", &m), "/p/volumes/config/job.yaml");
        assert_eq!(rewrite("/etc/weir", &m), "/p/volumes/config");
        assert_eq!(rewrite("/job.json", &m), "/p/volumes/config/job.json");
    }

    #[test]
    fn only_whole_path_segments_and_flag_values_are_rewritten() {
        let m = mounts();
        assert_eq!(rewrite("/etc/weirdo", &m), "/etc/weirdo");
        assert_eq!(rewrite("--job=/etc/weir/job.yaml", &m), "--job=/p/volumes/config/job.yaml");
        assert_eq!(rewrite("see /etc/weir/x", &m), "see /etc/weir/x");
        assert_eq!(rewrite("/nowhere/x", &m), "/nowhere/x");
        assert_eq!(rewrite("/run/secrets", &m), "/run/secrets", "without a mirror folder");
    }

    #[test]
    fn parents_of_mounts_point_into_the_mirror_folder() {
        let base = tempfile::tempdir().unwrap();
        for dir in dirs(base.path()).values() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(base.path().join("volumes/creds/username"), "weir").unwrap();
        let root = base.path().join("root");
        let m = Mounts::new(&container(), &dirs(base.path())).with_root(root.clone()).unwrap();
        let secrets = rewrite("--secrets-dir=/run/secrets", &m);
        assert_eq!(secrets, format!("--secrets-dir={}", root.join("run/secrets").display()));
        assert_eq!(std::fs::read_to_string(root.join("run/secrets/creds/username")).unwrap(), "weir");
        assert_eq!(
            rewrite("/run/secrets/creds/username", &m),
            base.path().join("volumes/creds/username").display().to_string()
        );
        assert_eq!(rewrite("/", &m), "/");
        assert_eq!(rewrite("/run/secretsx", &m), "/run/secretsx");
        assert!(!root.join("etc/weir/tls").exists(), "nested mounts are not linked inside their parent volume");
        Mounts::new(&container(), &dirs(base.path())).with_root(root).unwrap();
    }

    #[test]
    fn items_select_keys_and_set_modes() {
        let dir = tempfile::tempdir().unwrap();
        let files = BTreeMap::from([("a".to_owned(), b"A".to_vec()), ("b".to_owned(), b"B".to_vec())]);
        let items = [KeyToPath { key: "b".into(), path: "sub/b.txt".into(), mode: None }];
        write_files(dir.path(), files.clone(), Some(&items), false, 0o600).unwrap();
        assert_eq!(std::fs::read(dir.path().join("sub/b.txt")).unwrap(), b"B");
        assert!(!dir.path().join("a").exists());
        let mode = std::fs::metadata(dir.path().join("sub/b.txt")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let missing = [KeyToPath { key: "zz".into(), path: "zz".into(), mode: None }];
        assert!(write_files(dir.path(), files.clone(), Some(&missing), false, 0o644).is_err());
        assert!(write_files(dir.path(), files, Some(&missing), true, 0o644).is_ok());
    }
}

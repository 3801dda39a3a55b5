//! What exactly to execute for a container of a pod: the program from the image table,
//! the environment as the kubelet builds it (downward API, ConfigMap and Secret keys,
//! `$(VAR)` expansion), and mount paths rewritten to the pod's local folders.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Container, EnvVarSource, PodSecurityContext, Secret},
};
use kube::{Api, Client};

use super::{
    NODE_NAME,
    env::{self, Value},
    identity::{self, Identity, IdentityError, VolumeOwnership},
    images::{ImageTable, ResolveError},
    volumes::Mounts,
};

/// The pod facts a container's environment can refer to.
#[derive(Debug, Clone)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod uid (once created).
    pub uid: String,
    /// The pod's loopback address.
    pub ip: Ipv4Addr,
    /// Service account name.
    pub service_account: String,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Pod annotations.
    pub annotations: BTreeMap<String, String>,
    /// The pod's local folder (working directory, logs, volumes).
    pub dir: PathBuf,
    /// Where programs run as another user are linked (see [`identity::reachable`]).
    pub programs: PathBuf,
    /// The pod's securityContext.
    pub security: Option<PodSecurityContext>,
    /// How its volume files are owned.
    pub ownership: VolumeOwnership,
    /// The kubeconfig its containers get as `KUBECONFIG`, with the pod's own
    /// service-account token (see [`super::api_access`]); `None` when no container mounts
    /// one (`automountServiceAccountToken: false`).
    pub kubeconfig: Option<PathBuf>,
}

/// A container ready to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The executable, as a path.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// The complete environment.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Who runs it, when not the agent's user (see [`identity`]).
    pub identity: Option<Identity>,
}

/// Why a container cannot be started yet (shown as its waiting reason; retried).
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// No program for the image.
    #[error(transparent)]
    Image(#[from] ResolveError),
    /// The program is not on PATH or not a file.
    #[error("executable {0:?} not found")]
    NotFound(PathBuf),
    /// A referenced ConfigMap, Secret or key is missing.
    #[error("{kind} {name:?} not found")]
    Missing {
        /// ConfigMap, Secret or key.
        kind: &'static str,
        /// What is missing.
        name: String,
    },
    /// Reading from the API failed.
    #[error("reading {kind} {name:?}: {source}")]
    Api {
        /// ConfigMap or Secret.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The cause.
        source: kube::Error,
    },
    /// A `fieldRef` the agent does not know.
    #[error("unsupported fieldRef {0:?}")]
    FieldRef(String),
    /// The securityContext asks for a user the container cannot run as.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The program or the container's folder could not be made the user's.
    #[error("preparing {path} for the container's user: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl LaunchError {
    /// The kubelet's waiting reason for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Image(_) => "ErrImagePull",
            Self::NotFound(_) => "RunContainerError",
            _ => "CreateContainerConfigError",
        }
    }
}

/// Builds the launch of `container` in `pod`, rewriting paths into `mounts`.
pub async fn prepare(
    client: &Client,
    images: &ImageTable,
    pod: &PodInfo,
    container: &Container,
    mounts: &Mounts,
) -> Result<Launch, LaunchError> {
    let mut entries = base_env(pod);
    let mut sources =
        Sources { client, namespace: &pod.namespace, config_maps: BTreeMap::new(), secrets: BTreeMap::new() };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let values = if let Some(cm) = &from.config_map_ref {
            sources.config_map(&cm.name, cm.optional.unwrap_or(false)).await?
        } else if let Some(secret) = &from.secret_ref {
            sources.secret(&secret.name, secret.optional.unwrap_or(false)).await?
        } else {
            BTreeMap::new()
        };
        entries.extend(values.into_iter().map(|(k, v)| (format!("{prefix}{k}"), Value::Literal(v))));
    }
    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            Some(from) => match value_from(from, pod, &mut sources).await? {
                Some(value) => Value::Literal(value),
                None => continue,
            },
            None => Value::Template(var.value.clone().unwrap_or_default()),
        };
        entries.push((var.name.clone(), value));
    }
    let env: Vec<(String, String)> = env::expand_env(entries)
        .into_iter()
        .map(|(name, value)| {
            let value = mounts.rewrite(&value);
            (name, value)
        })
        .collect();
    let expand = |text: &str| mounts.rewrite(&env::expand(text, |name| env::lookup(&env, name)));
    let command: Vec<String> = container.command.iter().flatten().map(|c| expand(c)).collect();
    let args: Vec<String> = container.args.iter().flatten().map(|a| expand(a)).collect();
    let image = container.image.clone().unwrap_or_default();
    let resolved = images.resolve(&image, &command, &args)?;
    let program = find_program(&resolved.program, env::lookup(&env, "PATH").as_deref())?;
    let cwd = container
        .working_dir
        .as_deref()
        .map(|dir| PathBuf::from(mounts.rewrite(dir)))
        .filter(|dir| dir.is_dir())
        .unwrap_or_else(|| pod.dir.clone());
    let agent = Identity::of_agent().map_err(|source| LaunchError::Io { path: "/proc/self".into(), source })?;
    let identity = identity::resolve(pod.security.as_ref(), container.security_context.as_ref(), &agent)?;
    let program = match &identity {
        Some(user) if user.uid != agent.uid => {
            if let Some(closed) = identity::closed_on_the_way(&pod.dir, user) {
                return Err(IdentityError::Unreachable { uid: user.uid, closed }.into());
            }
            match program.parent().and_then(|folder| identity::closed_on_the_way(folder, user)) {
                Some(_) => identity::reachable(&program, &pod.programs)
                    .map_err(|source| LaunchError::Io { path: program.clone(), source })?,
                None => program,
            }
        }
        _ => program,
    };
    Ok(Launch { program, args: resolved.args, env, cwd, identity })
}

/// What every container's environment starts with: PATH and HOME from the agent (there is
/// no image to provide them), HOSTNAME as the kubelet sets it, and KUBECONFIG for a pod with
/// a service-account token, so in-cluster programs (`kube`'s `Config::infer`, the operator)
/// reach the API server.
pub fn base_env(pod: &PodInfo) -> Vec<(String, Value)> {
    let mut entries: Vec<(String, Value)> = ["PATH", "HOME"]
        .into_iter()
        .filter_map(|name| std::env::var(name).ok().map(|v| (name.to_owned(), Value::Literal(v))))
        .collect();
    entries.push(("HOSTNAME".to_owned(), Value::Literal(pod.name.clone())));
    if let Some(kubeconfig) = &pod.kubeconfig {
        entries.push(("KUBECONFIG".to_owned(), Value::Literal(kubeconfig.display().to_string())));
    }
    entries
}

/// A `valueFrom` value; `None` for an optional reference that is missing, and for
/// `resourceFieldRef` (there are no resource limits here).
async fn value_from(
    from: &EnvVarSource,
    pod: &PodInfo,
    sources: &mut Sources<'_>,
) -> Result<Option<String>, LaunchError> {
    if let Some(field) = &from.field_ref {
        return field_value(&field.field_path, pod).map(Some);
    }
    if let Some(key) = &from.config_map_key_ref {
        let optional = key.optional.unwrap_or(false);
        let values = sources.config_map(&key.name, optional).await?;
        return pick(values, &key.key, optional);
    }
    if let Some(key) = &from.secret_key_ref {
        let optional = key.optional.unwrap_or(false);
        let values = sources.secret(&key.name, optional).await?;
        return pick(values, &key.key, optional);
    }
    Ok(None)
}

fn pick(mut values: BTreeMap<String, String>, key: &str, optional: bool) -> Result<Option<String>, LaunchError> {
    match values.remove(key) {
        Some(value) => Ok(Some(value)),
        None if optional => Ok(None),
        None => Err(LaunchError::Missing { kind: "key", name: key.to_owned() }),
    }
}

/// The downward API fields a kubelet resolves for env.
pub fn field_value(path: &str, pod: &PodInfo) -> Result<String, LaunchError> {
    let map_key = |prefix: &str| {
        path.strip_prefix(prefix).and_then(|rest| rest.strip_prefix("['")).and_then(|rest| rest.strip_suffix("']"))
    };
    Ok(match path {
        "metadata.name" => pod.name.clone(),
        "metadata.namespace" => pod.namespace.clone(),
        "metadata.uid" => pod.uid.clone(),
        "spec.nodeName" => NODE_NAME.to_owned(),
        "spec.serviceAccountName" => pod.service_account.clone(),
        "status.podIP" | "status.podIPs" => pod.ip.to_string(),
        "status.hostIP" | "status.hostIPs" => "127.0.0.1".to_owned(),
        _ => {
            if let Some(key) = map_key("metadata.labels") {
                pod.labels.get(key).cloned().unwrap_or_default()
            } else if let Some(key) = map_key("metadata.annotations") {
                pod.annotations.get(key).cloned().unwrap_or_default()
            } else {
                return Err(LaunchError::FieldRef(path.to_owned()));
            }
        }
    })
}

/// A program path: as given when it names a file, else searched on `path` (colon-separated).
fn find_program(program: &Path, path: Option<&str>) -> Result<PathBuf, LaunchError> {
    if program.components().count() > 1 {
        return if program.is_file() { Ok(program.to_path_buf()) } else { Err(LaunchError::NotFound(program.into())) };
    }
    path.unwrap_or_default()
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| LaunchError::NotFound(program.into()))
}

/// ConfigMaps and Secrets read once per launch.
struct Sources<'a> {
    client: &'a Client,
    namespace: &'a str,
    config_maps: BTreeMap<String, BTreeMap<String, String>>,
    secrets: BTreeMap<String, BTreeMap<String, String>>,
}

impl Sources<'_> {
    async fn config_map(&mut self, name: &str, optional: bool) -> Result<BTreeMap<String, String>, LaunchError> {
        if let Some(values) = self.config_maps.get(name) {
            return Ok(values.clone());
        }
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), self.namespace);
        let values = match api.get_opt(name).await {
            Ok(Some(cm)) => {
                let mut values = cm.data.unwrap_or_default();
                values.extend(
                    cm.binary_data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, ByteString(v))| (k, String::from_utf8_lossy(&v).into_owned())),
                );
                values
            }
            Ok(None) if optional => BTreeMap::new(),
            Ok(None) => return Err(LaunchError::Missing { kind: "ConfigMap", name: name.to_owned() }),
            Err(source) => return Err(LaunchError::Api { kind: "ConfigMap", name: name.to_owned(), source }),
        };
        self.config_maps.insert(name.to_owned(), values.clone());
        Ok(values)
    }

    async fn secret(&mut self, name: &str, optional: bool) -> Result<BTreeMap<String, String>, LaunchError> {
        if let Some(values) = self.secrets.get(name) {
            return Ok(values.clone());
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), self.namespace);
        let values = match api.get_opt(name).await {
            Ok(Some(secret)) => {
                let mut values: BTreeMap<String, String> = secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, ByteString(v))| (k, String::from_utf8_lossy(&v).into_owned()))
                    .collect();
                values.extend(secret.string_data.unwrap_or_default());
                values
            }
            Ok(None) if optional => BTreeMap::new(),
            Ok(None) => return Err(LaunchError::Missing { kind: "Secret", name: name.to_owned() }),
            Err(source) => return Err(LaunchError::Api { kind: "Secret", name: name.to_owned(), source }),
        };
        self.secrets.insert(name.to_owned(), values.clone());
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodInfo {
        PodInfo {
            namespace: "ns".into(),
            name: "p".into(),
            uid: "u".into(),
            ip: Ipv4Addr::new(127, 0, 0, 9),
            service_account: "default".into(),
            labels: BTreeMap::from([("app".into(), "x".into())]),
            annotations: BTreeMap::new(),
            dir: PathBuf::from("/tmp"),
            programs: PathBuf::from("/tmp/bin"),
            security: None,
            ownership: VolumeOwnership::default(),
            kubeconfig: None,
        }
    }

    #[test]
    fn pods_with_api_access_get_the_kubeconfig_and_others_do_not() {
        let names = |env: Vec<(String, Value)>| env.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        assert!(!names(base_env(&pod())).contains(&"KUBECONFIG".to_owned()));
        let with_access = PodInfo { kubeconfig: Some(PathBuf::from("/run/agent/kubeconfig")), ..pod() };
        let env = base_env(&with_access);
        assert!(env.contains(&("KUBECONFIG".into(), Value::Literal("/run/agent/kubeconfig".into()))), "{env:?}");
        assert!(env.contains(&("HOSTNAME".into(), Value::Literal("p".into()))), "{env:?}");
    }

    #[test]
    fn downward_api_fields() {
        let p = pod();
        assert_eq!(field_value("status.podIP", &p).unwrap(), "127.0.0.9");
        assert_eq!(field_value("metadata.name", &p).unwrap(), "p");
        assert_eq!(field_value("metadata.namespace", &p).unwrap(), "ns");
        assert_eq!(field_value("spec.nodeName", &p).unwrap(), "local");
        assert_eq!(field_value("metadata.labels['app']", &p).unwrap(), "x");
        assert!(field_value("status.phase", &p).is_err());
    }

    #[test]
    fn programs_are_found_on_path() {
        let sh = find_program(Path::new("sh"), Some("/nonexistent:/bin:/usr/bin")).unwrap();
        assert!(sh.ends_with("sh") && sh.is_absolute());
        assert!(find_program(Path::new("no-such-program-here"), Some("/bin")).is_err());
        assert!(find_program(Path::new("/no/such/file"), None).is_err());
    }
}

//! API access from a pod, as a kubelet gives it. Programs in a pod find their
//! service-account token, CA and namespace in the volume mounted at
//! [`SERVICE_ACCOUNT_DIR`], and the server at `KUBERNETES_SERVICE_HOST`. A local process
//! cannot see that path, kube's in-cluster configuration reads it as a fixed path, and the
//! `kubernetes` Service's cluster IP routes nowhere here. So a pod whose containers mount a
//! volume there gets a kubeconfig in its own folder instead, as `KUBECONFIG`: the API
//! server's address with that volume's CA and `tokenFile`. Clients re-read a `tokenFile`,
//! so they follow the agent's token refreshes. The pod acts as its own ServiceAccount.

use std::path::Path;

use k8s_openapi::api::core::v1::PodSpec;
use kube::config::{AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext};

/// Where a kubelet mounts a pod's service-account credentials.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The file name of the generated kubeconfig in a pod's folder.
pub const KUBECONFIG_FILE: &str = "kubeconfig";

/// The volume that some container of the pod mounts at [`SERVICE_ACCOUNT_DIR`]: the one
/// the ServiceAccount admission plugin added, unless the pod opted out.
pub fn service_account_volume(spec: &PodSpec) -> Option<&str> {
    spec.containers
        .iter()
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .find(|m| m.mount_path.trim_end_matches('/') == SERVICE_ACCOUNT_DIR)
        .map(|m| m.name.as_str())
}

/// A kubeconfig reaching `server` with the token and CA files of `volume_dir`.
pub fn kubeconfig(server: &str, volume_dir: &Path, namespace: &str) -> Kubeconfig {
    let name = "in-cluster".to_owned();
    let file = |name: &str| Some(volume_dir.join(name).display().to_string());
    Kubeconfig {
        clusters: vec![NamedCluster {
            name: name.clone(),
            cluster: Some(Cluster {
                server: Some(server.to_owned()),
                certificate_authority: file("ca.crt"),
                ..Cluster::default()
            }),
            other: Default::default(),
        }],
        auth_infos: vec![NamedAuthInfo {
            name: name.clone(),
            auth_info: Some(AuthInfo { token_file: file("token"), ..AuthInfo::default() }),
            other: Default::default(),
        }],
        contexts: vec![NamedContext {
            name: name.clone(),
            context: Some(Context {
                cluster: name.clone(),
                user: Some(name.clone()),
                namespace: Some(namespace.to_owned()),
                ..Context::default()
            }),
            other: Default::default(),
        }],
        current_context: Some(name),
        kind: Some("Config".into()),
        api_version: Some("v1".into()),
        ..Kubeconfig::default()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Container, VolumeMount};

    use super::*;

    fn spec(mount_path: &str) -> PodSpec {
        PodSpec {
            containers: vec![Container {
                name: "c".into(),
                volume_mounts: Some(vec![VolumeMount {
                    name: "kube-api-access-x".into(),
                    mount_path: mount_path.into(),
                    ..VolumeMount::default()
                }]),
                ..Container::default()
            }],
            ..PodSpec::default()
        }
    }

    #[test]
    fn the_service_account_volume_is_found_by_its_mount_path() {
        assert_eq!(service_account_volume(&spec(SERVICE_ACCOUNT_DIR)), Some("kube-api-access-x"));
        assert_eq!(
            service_account_volume(&spec("/var/run/secrets/kubernetes.io/serviceaccount/")),
            Some("kube-api-access-x")
        );
        assert_eq!(service_account_volume(&spec("/etc/config")), None);
    }

    #[test]
    fn the_kubeconfig_names_the_volume_files() {
        let config = kubeconfig("https://127.0.0.1:6443", Path::new("/p/volumes/sa"), "jobs");
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["clusters"][0]["cluster"]["certificate-authority"], "/p/volumes/sa/ca.crt");
        assert_eq!(json["users"][0]["user"]["tokenFile"], "/p/volumes/sa/token");
        assert_eq!(json["contexts"][0]["context"]["namespace"], "jobs");
        assert_eq!(json["current-context"], "in-cluster");
    }
}

//! Who a container's process runs as: the user and groups its securityContext names (the
//! container's fields over the pod's, as the kubelet merges them), and what that user
//! needs to reach: its program, its folders and its volume files.
//!
//! The agent runs processes as another user only when it runs as root; a pod that asks for
//! another user on an agent that is not root does not start, rather than run as the
//! agent's user unnoticed.

use std::{
    io,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::{PodSecurityContext, SecurityContext};

/// The user, primary group and supplementary groups of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups: the pod's `fsGroup` and `supplementalGroups`.
    pub groups: Vec<u32>,
}

impl Identity {
    /// The agent's own user and group (those of its `/proc/self`).
    pub fn of_agent() -> io::Result<Self> {
        let meta = std::fs::metadata("/proc/self")?;
        Ok(Self { uid: meta.uid(), gid: meta.gid(), groups: Vec::new() })
    }

    /// `setpriv` options that switch to this identity.
    pub fn setpriv_args(&self) -> Vec<String> {
        let mut args = vec!["--reuid".to_owned(), self.uid.to_string(), "--regid".to_owned(), self.gid.to_string()];
        if self.groups.is_empty() {
            args.push("--clear-groups".to_owned());
        } else {
            let groups: Vec<String> = self.groups.iter().map(u32::to_string).collect();
            args.extend(["--groups".to_owned(), groups.join(",")]);
        }
        args
    }
}

/// Why a container cannot run as its securityContext asks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// `runAsNonRoot` with no user other than root to run as.
    #[error("container has runAsNonRoot and would run as root (set runAsUser)")]
    WouldRunAsRoot,
    /// An id that is not a valid user or group id.
    #[error("{field} {value} is not a valid id")]
    Invalid {
        /// The securityContext field.
        field: &'static str,
        /// Its value.
        value: i64,
    },
    /// The pod's folder sits under one the user may not enter.
    #[error(
        "user {uid} cannot reach the pod's folder: {closed} is closed to it (give the node agent a --state-dir others may enter)"
    )]
    Unreachable {
        /// The user.
        uid: u32,
        /// The folder in the way.
        closed: PathBuf,
    },
    /// The agent is not root, so it cannot switch users.
    #[error("cannot run as user {uid} group {gid}: the node agent is not root")]
    NotPermitted {
        /// The user asked for.
        uid: u32,
        /// The group asked for.
        gid: u32,
    },
}

fn id(field: &'static str, value: Option<i64>) -> Result<Option<u32>, IdentityError> {
    value.map(|v| u32::try_from(v).map_err(|_| IdentityError::Invalid { field, value: v })).transpose()
}

/// The identity a container runs as, or `None` to run as the agent: no securityContext
/// names a user or group. A user with no group gets group 0, as container runtimes give an
/// image user unknown to the image.
pub fn resolve(
    pod: Option<&PodSecurityContext>,
    container: Option<&SecurityContext>,
    agent: &Identity,
) -> Result<Option<Identity>, IdentityError> {
    let user = id("runAsUser", container.and_then(|c| c.run_as_user).or(pod.and_then(|p| p.run_as_user)))?;
    let group = id("runAsGroup", container.and_then(|c| c.run_as_group).or(pod.and_then(|p| p.run_as_group)))?;
    let non_root = container.and_then(|c| c.run_as_non_root).or(pod.and_then(|p| p.run_as_non_root)).unwrap_or(false);
    let mut groups = Vec::new();
    if let Some(fs_group) = id("fsGroup", pod.and_then(|p| p.fs_group))? {
        groups.push(fs_group);
    }
    for supplemental in pod.and_then(|p| p.supplemental_groups.as_deref()).unwrap_or_default() {
        groups.extend(id("supplementalGroups", Some(*supplemental))?);
    }
    groups.sort_unstable();
    groups.dedup();
    if non_root && user.unwrap_or(agent.uid) == 0 {
        return Err(IdentityError::WouldRunAsRoot);
    }
    if user.is_none() && group.is_none() && groups.is_empty() {
        return Ok(None);
    }
    let identity = Identity { uid: user.unwrap_or(agent.uid), gid: group.unwrap_or(0), groups };
    if agent.uid != 0 && (identity.uid, identity.gid) != (agent.uid, agent.gid) {
        return Err(IdentityError::NotPermitted { uid: identity.uid, gid: identity.gid });
    }
    Ok(Some(identity))
}

/// The first folder on the way to `path` (from `/`) that `identity` may not enter, if any:
/// a pod whose folder sits under one cannot read its volumes as that user.
pub fn closed_on_the_way(path: &Path, identity: &Identity) -> Option<PathBuf> {
    let mut ancestors: Vec<&Path> = path.ancestors().collect();
    ancestors.reverse();
    ancestors.into_iter().find_map(|dir| {
        let meta = std::fs::metadata(dir).ok()?;
        let mode = meta.permissions().mode();
        let bit = if meta.uid() == identity.uid {
            0o100
        } else if meta.gid() == identity.gid || identity.groups.contains(&meta.gid()) {
            0o010
        } else {
            0o001
        };
        (identity.uid != 0 && mode & bit == 0).then(|| dir.to_path_buf())
    })
}

/// How a pod's volume files are owned, as the kubelet sets them: with `fsGroup`, every
/// file and folder belongs to that group and the group may read them (and write an
/// emptyDir); without one, a service-account token belongs to the pod's user alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VolumeOwnership {
    /// The pod's `fsGroup`.
    pub fs_group: Option<u32>,
    /// The user every container runs as, when they all run as one (it owns the tokens).
    pub token_owner: Option<u32>,
}

impl VolumeOwnership {
    /// The ownership the pod's securityContext asks for (invalid ids are ignored here:
    /// the containers that use them do not start).
    pub fn of(pod: Option<&PodSecurityContext>, containers: &[Option<&SecurityContext>]) -> Self {
        let fs_group = pod.and_then(|p| p.fs_group).and_then(|g| u32::try_from(g).ok());
        let users: Vec<Option<i64>> =
            containers.iter().map(|c| c.and_then(|c| c.run_as_user).or(pod.and_then(|p| p.run_as_user))).collect();
        let token_owner = match users.split_first() {
            Some((first, rest)) if rest.iter().all(|u| u == first) => first.and_then(|u| u32::try_from(u).ok()),
            _ => None,
        };
        Self { fs_group, token_owner }
    }

    /// Gives the files and folders under `dir` to the fsGroup: the group owns them and may
    /// read them (and write them when `writable`); folders get the setgid bit, so what is
    /// created in them belongs to the group too. Nothing changes without an fsGroup.
    pub fn share(&self, dir: &Path, writable: bool) -> io::Result<()> {
        let Some(group) = self.fs_group else { return Ok(()) };
        let (file_bits, dir_bits) = if writable { (0o660, 0o2770) } else { (0o440, 0o2550) };
        for entry in walk(dir)? {
            let meta = std::fs::symlink_metadata(&entry)?;
            if meta.file_type().is_symlink() {
                continue;
            }
            std::os::unix::fs::chown(&entry, None, Some(group))?;
            let bits = if meta.is_dir() { dir_bits } else { file_bits };
            std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(meta.permissions().mode() | bits))?;
        }
        Ok(())
    }

    /// Gives a token file to the pod's user (mode 0600) when there is no fsGroup to share
    /// it with, so a user other than the agent's can read it.
    pub fn own_token(&self, file: &Path) -> io::Result<()> {
        match (self.fs_group, self.token_owner) {
            (None, Some(owner)) => {
                std::os::unix::fs::chown(file, Some(owner), None)?;
                std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
            }
            _ => Ok(()),
        }
    }
}

/// `dir` and everything under it (symbolic links are listed, not followed).
fn walk(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found = vec![dir.to_path_buf()];
    let mut next = 0;
    while next < found.len() {
        let path = found[next].clone();
        next += 1;
        if std::fs::symlink_metadata(&path)?.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                found.push(entry?.path());
            }
        }
    }
    Ok(found)
}

/// `program`, at a path any user can reach: the agent's programs may sit where only the
/// agent can enter (a home folder), so one that is run as another user is hard-linked (or,
/// across filesystems, copied) into `bin`. The link is named by the file's device, inode
/// and modification time, so a rebuilt program gets a new one.
pub fn reachable(program: &Path, bin: &Path) -> io::Result<PathBuf> {
    // A link to a symbolic link would point nowhere from `bin`.
    let program = &std::fs::canonicalize(program)?;
    let meta = std::fs::metadata(program)?;
    let name = program.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "program".into());
    // Not the change time: linking changes it.
    let changed = format!("{:x}.{:x}", meta.mtime(), meta.mtime_nsec());
    let linked = bin.join(format!("{name}-{:x}-{:x}-{changed}", meta.dev(), meta.ino()));
    if linked.exists() {
        return Ok(linked);
    }
    std::fs::create_dir_all(bin)?;
    std::fs::set_permissions(bin, std::fs::Permissions::from_mode(0o755))?;
    // Two pods may link the same program at once: each links to its own name, then renames.
    let temporary = bin.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    if std::fs::hard_link(program, &temporary).is_err() {
        std::fs::copy(program, &temporary)?;
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(meta.permissions().mode() | 0o555))?;
    }
    std::fs::rename(&temporary, &linked)?;
    Ok(linked)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: Identity = Identity { uid: 0, gid: 0, groups: Vec::new() };

    fn pod(user: Option<i64>, group: Option<i64>, fs_group: Option<i64>, non_root: Option<bool>) -> PodSecurityContext {
        PodSecurityContext {
            run_as_user: user,
            run_as_group: group,
            fs_group,
            run_as_non_root: non_root,
            ..PodSecurityContext::default()
        }
    }

    #[test]
    fn the_container_overrides_the_pod_and_fs_group_is_a_supplementary_group() {
        let pod = PodSecurityContext {
            supplemental_groups: Some(vec![7, 2000]),
            ..pod(Some(1000), Some(1000), Some(2000), None)
        };
        let container = SecurityContext { run_as_user: Some(1001), ..SecurityContext::default() };
        let identity = resolve(Some(&pod), Some(&container), &ROOT).unwrap();
        assert_eq!(identity, Some(Identity { uid: 1001, gid: 1000, groups: vec![7, 2000] }));
        assert_eq!(
            identity.unwrap().setpriv_args(),
            ["--reuid", "1001", "--regid", "1000", "--groups", "7,2000"].map(String::from)
        );
    }

    #[test]
    fn no_user_or_group_runs_as_the_agent_and_a_user_alone_gets_group_zero() {
        assert_eq!(resolve(None, None, &ROOT).unwrap(), None);
        assert_eq!(resolve(Some(&pod(None, None, None, Some(false))), None, &ROOT).unwrap(), None);
        let user_only = resolve(Some(&pod(Some(65532), None, None, None)), None, &ROOT).unwrap().unwrap();
        assert_eq!((user_only.uid, user_only.gid), (65532, 0));
        assert_eq!(user_only.setpriv_args().last().map(String::as_str), Some("--clear-groups"));
    }

    #[test]
    fn run_as_non_root_refuses_root() {
        let agent_root = resolve(Some(&pod(None, None, None, Some(true))), None, &ROOT);
        assert_eq!(agent_root, Err(IdentityError::WouldRunAsRoot));
        let asked_root = resolve(Some(&pod(Some(0), None, None, Some(true))), None, &ROOT);
        assert_eq!(asked_root, Err(IdentityError::WouldRunAsRoot));
        let container = SecurityContext { run_as_non_root: Some(true), ..SecurityContext::default() };
        assert!(resolve(Some(&pod(Some(10), None, None, None)), Some(&container), &ROOT).is_ok());
        assert_eq!(
            resolve(Some(&pod(None, None, None, None)), Some(&container), &ROOT),
            Err(IdentityError::WouldRunAsRoot)
        );
    }

    #[test]
    fn an_agent_that_is_not_root_runs_only_as_itself() {
        let agent = Identity { uid: 1000, gid: 1000, groups: Vec::new() };
        assert_eq!(
            resolve(Some(&pod(Some(65532), Some(65532), None, None)), None, &agent),
            Err(IdentityError::NotPermitted { uid: 65532, gid: 65532 })
        );
        assert!(resolve(Some(&pod(Some(1000), Some(1000), None, None)), None, &agent).is_ok());
        assert!(resolve(Some(&pod(None, None, None, Some(true))), None, &agent).unwrap().is_none());
    }

    #[test]
    fn negative_ids_are_named() {
        assert_eq!(
            resolve(Some(&pod(Some(-1), None, None, None)), None, &ROOT),
            Err(IdentityError::Invalid { field: "runAsUser", value: -1 })
        );
    }

    #[test]
    fn tokens_belong_to_the_one_user_of_a_pod_without_fs_group() {
        let one_user = pod(Some(65532), None, None, None);
        let same = VolumeOwnership::of(Some(&one_user), &[None, None]);
        assert_eq!(same, VolumeOwnership { fs_group: None, token_owner: Some(65532) });
        let other = SecurityContext { run_as_user: Some(1), ..SecurityContext::default() };
        assert_eq!(VolumeOwnership::of(Some(&one_user), &[None, Some(&other)]).token_owner, None);
        let grouped = VolumeOwnership::of(Some(&pod(Some(65532), None, Some(65532), None)), &[None]);
        assert_eq!(grouped.fs_group, Some(65532));
    }

    #[test]
    fn sharing_with_the_fs_group_adds_group_read_and_setgid() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let file = dir.path().join("sub/token");
        std::fs::write(&file, "x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let group = Identity::of_agent().unwrap().gid;
        VolumeOwnership { fs_group: Some(group), token_owner: None }.share(dir.path(), false).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&file), 0o640);
        assert_eq!(mode(&dir.path().join("sub")) & 0o2550, 0o2550);
        assert_eq!(std::fs::metadata(&file).unwrap().gid(), group);
    }

    #[test]
    fn a_folder_closed_to_others_on_the_way_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("a/b");
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let stranger = Identity { uid: 4242, gid: 4242, groups: Vec::new() };
        assert_eq!(closed_on_the_way(&inner, &stranger), None);
        std::fs::set_permissions(dir.path().join("a"), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(closed_on_the_way(&inner, &stranger), Some(dir.path().join("a")));
        assert_eq!(closed_on_the_way(&inner, &ROOT), None);
    }

    #[test]
    fn a_program_is_linked_once_per_build_into_bin() {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("tool");
        std::fs::write(&program, "#!/bin/sh\n").unwrap();
        let bin = dir.path().join("bin");
        let first = reachable(&program, &bin).unwrap();
        assert_eq!(reachable(&program, &bin).unwrap(), first);
        assert_eq!(std::fs::metadata(&first).unwrap().ino(), std::fs::metadata(&program).unwrap().ino());
        std::fs::remove_file(&program).unwrap();
        std::fs::write(&program, "#!/bin/sh\necho rebuilt\n").unwrap();
        let second = reachable(&program, &bin).unwrap();
        assert_ne!(second, first);
        assert_eq!(std::fs::read_to_string(second).unwrap(), "#!/bin/sh\necho rebuilt\n");
    }
}

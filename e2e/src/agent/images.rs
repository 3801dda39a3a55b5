//! The image table: there is no container runtime here, so an image name stands for a
//! local executable (`--image NAME=PATH`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    str::FromStr,
};

/// Image names (without tag or digest) and command basenames mapped to local programs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageTable(BTreeMap<String, PathBuf>);

/// A `NAME=PATH` entry that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("image mapping {0:?} is not NAME=PATH")]
pub struct BadMapping(String);

/// One `--image NAME=PATH` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageMapping {
    /// The image, without tag or digest.
    pub name: String,
    /// The program run for it.
    pub path: PathBuf,
}

impl FromStr for ImageMapping {
    type Err = BadMapping;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            Some((name, path)) if !name.is_empty() && !path.is_empty() => {
                Ok(Self { name: image_name(name).to_owned(), path: PathBuf::from(path) })
            }
            _ => Err(BadMapping(s.to_owned())),
        }
    }
}

/// Why a container has no program to run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    /// Neither `command` nor a table entry for the image.
    #[error("image {0:?} is not in the image table (--image NAME=PATH) and the container has no command")]
    UnmappedImage(String),
}

/// What to execute for a container, before `$(VAR)` expansion and path rewriting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// The executable (a path, or a name looked up on PATH).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

impl ImageTable {
    /// A table from `--image` flags; a later entry for the same name wins.
    pub fn new(mappings: impl IntoIterator<Item = ImageMapping>) -> Self {
        Self(mappings.into_iter().map(|m| (m.name, m.path)).collect())
    }

    /// The program for an image reference such as `ghcr.io/x/y:1.0@sha256:...`.
    pub fn image(&self, image: &str) -> Option<&Path> {
        self.0.get(image_name(image)).map(PathBuf::as_path)
    }

    /// The program for a command basename: an entry named so, or an image whose last path
    /// segment is that name (so `command: [/usr/bin/weir-runtime]` finds `ghcr.io/weir-dev/weir-runtime`).
    pub fn command(&self, command: &str) -> Option<&Path> {
        let base = command.rsplit('/').next().unwrap_or(command);
        self.0
            .get(base)
            .or_else(|| self.0.iter().find(|(name, _)| name.rsplit('/').next() == Some(base)).map(|e| e.1))
            .map(PathBuf::as_path)
    }

    /// The kubelet's rule: `command` replaces the image's entrypoint, `args` follow it.
    pub fn resolve(&self, image: &str, command: &[String], args: &[String]) -> Result<Program, ResolveError> {
        match command.split_first() {
            Some((first, rest)) => {
                let program = self.command(first).map_or_else(|| PathBuf::from(first), Path::to_path_buf);
                Ok(Program { program, args: rest.iter().chain(args).cloned().collect() })
            }
            None => match self.image(image) {
                Some(program) => Ok(Program { program: program.to_path_buf(), args: args.to_vec() }),
                None => Err(ResolveError::UnmappedImage(image.to_owned())),
            },
        }
    }
}

/// An image reference without its digest and tag (a `:` after the last `/` starts the tag;
/// one before it is a registry port).
pub fn image_name(image: &str) -> &str {
    let image = image.split_once('@').map_or(image, |(name, _)| name);
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].find(':') {
        Some(colon) => &image[..last_slash + colon],
        None => image,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> ImageTable {
        ImageTable::new(
            ["ghcr.io/weir-dev/weir-runtime=/bin/runtime", "example.com/http-echo=python3", "sh=/bin/dash"]
                .map(|s| s.parse::<ImageMapping>().unwrap()),
        )
    }

    #[test]
    fn image_names_drop_tag_and_digest_but_keep_registry_ports() {
        assert_eq!(image_name("ghcr.io/weir-dev/weir-runtime:0.1.0"), "ghcr.io/weir-dev/weir-runtime");
        assert_eq!(image_name("localhost:5000/app@sha256:abc"), "localhost:5000/app");
        assert_eq!(image_name("localhost:5000/app:1@sha256:abc"), "localhost:5000/app");
        assert_eq!(image_name("busybox"), "busybox");
    }

    #[test]
    fn mappings_parse_and_reject_garbage() {
        assert_eq!(
            "a/b:1=/x".parse::<ImageMapping>(),
            Ok(ImageMapping { name: "a/b".into(), path: PathBuf::from("/x") })
        );
        assert!("nopath=".parse::<ImageMapping>().is_err());
        assert!("plain".parse::<ImageMapping>().is_err());
    }

    #[test]
    fn image_entrypoint_takes_args() {
        let p = table().resolve("example.com/http-echo:2", &[], &["-m".into(), "http.server".into()]).unwrap();
        assert_eq!(p, Program { program: "python3".into(), args: vec!["-m".into(), "http.server".into()] });
    }

    #[test]
    fn command_is_looked_up_by_basename_then_run_as_is() {
        let cmd = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let p = table().resolve("any", &cmd(&["/usr/local/bin/weir-runtime", "run"]), &cmd(&["--x"])).unwrap();
        assert_eq!(p.program, PathBuf::from("/bin/runtime"));
        assert_eq!(p.args, cmd(&["run", "--x"]));
        assert_eq!(table().resolve("any", &cmd(&["/bin/sh", "-c"]), &[]).unwrap().program, PathBuf::from("/bin/dash"));
        assert_eq!(table().resolve("any", &cmd(&["true"]), &[]).unwrap().program, PathBuf::from("true"));
    }

    #[test]
    fn an_unmapped_image_without_command_is_an_error() {
        assert_eq!(table().resolve("nginx:1", &[], &[]), Err(ResolveError::UnmappedImage("nginx:1".into())));
    }
}

//! Prints the StreamJob CustomResourceDefinition as YAML (`crds/streamjob.yaml` and the
//! chart's `charts/weir/crds/streamjob.yaml` are its output), with `savepoint` the
//! StreamJobSavepoint one (`crds/streamjobsavepoint.yaml`, and the chart's), or with
//! `--reference` the StreamJob reference in Markdown (`docs/streamjob-reference.md`), from
//! the same schema.

mod reference;

use std::process::ExitCode;

use kube::CustomResourceExt;
use weir_crds::{StreamJob, StreamJobSavepoint};

fn main() -> ExitCode {
    let crd = StreamJob::crd();
    let printed = match std::env::args().nth(1).as_deref() {
        None => serde_yaml::to_string(&crd).map_err(|e| e.to_string()),
        Some("savepoint") => serde_yaml::to_string(&StreamJobSavepoint::crd()).map_err(|e| e.to_string()),
        Some("--reference") => reference::markdown(&crd),
        Some(other) => Err(format!("unknown argument {other:?}; usage: crdgen [savepoint | --reference]")),
    };
    match printed {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("crdgen: {e}");
            ExitCode::FAILURE
        }
    }
}

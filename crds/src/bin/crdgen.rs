//! Prints the StreamJob CustomResourceDefinition as YAML; `crds/streamjob.yaml` is its output.

use kube::CustomResourceExt;
use weir_crds::StreamJob;

fn main() -> Result<(), serde_yaml::Error> {
    print!("{}", serde_yaml::to_string(&StreamJob::crd())?);
    Ok(())
}

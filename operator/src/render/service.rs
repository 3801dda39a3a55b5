//! The headless Service that lists the runtime pods' admin endpoints for metrics scrapes.

use k8s_openapi::{
    api::core::v1::{Service, ServicePort, ServiceSpec},
    apimachinery::pkg::util::intstr::IntOrString,
};

use crate::{config::OperatorConfig, labels::JobRef, render::ADMIN_PORT_NAME};

/// Headless Service `<name>` over the pods' `admin` port, listing pods that are not yet
/// ready too: their metrics matter most when they struggle.
pub fn service(job_ref: &JobRef, config: &OperatorConfig) -> Service {
    Service {
        metadata: job_ref.child_meta(job_ref.name.clone()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(job_ref.selector_labels()),
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![ServicePort {
                name: Some(ADMIN_PORT_NAME.into()),
                port: config.admin_port,
                target_port: Some(IntOrString::String(ADMIN_PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

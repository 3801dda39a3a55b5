//! Where a runtime pod's admin API is: its IP and the admin port. The calls themselves are
//! `weir_admin_api::client`'s.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Pod;

/// The admin address of a pod that has an IP.
pub fn admin_address(pod: &Pod, admin_port: i32) -> Option<SocketAddr> {
    let ip: IpAddr = pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
    Some(SocketAddr::new(ip, u16::try_from(admin_port).ok()?))
}

//! Choosing the port to run on.

use crate::error::{Error, Result};
use crate::stats::PortInfo;

/// The port named `device`, or the first one the EAL found, with an error
/// that tells an operator what to check.
pub fn select_port(all_ports: &[PortInfo], device: Option<&str>) -> Result<PortInfo> {
    match device {
        Some(name) => all_ports
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .ok_or_else(|| {
                Error::NoPort(format!(
                    "no port named {name}; the EAL found: {}",
                    names(all_ports)
                ))
            }),
        None => all_ports.first().cloned().ok_or_else(|| {
            Error::NoPort(
                "the EAL found no port. For --vdev=net_af_packet0,iface=X (and af_xdp, tap) check \
                 that interface X exists in this network namespace and that you may open it (root \
                 or CAP_NET_RAW/CAP_NET_ADMIN); the EAL log above names the device that failed. \
                 For a PCI NIC (mlx5 on BlueField) pass -a <PCI address> and drop --no-pci"
                    .into(),
            )
        }),
    }
}

fn names(ports: &[PortInfo]) -> String {
    if ports.is_empty() {
        "none".into()
    } else {
        ports
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

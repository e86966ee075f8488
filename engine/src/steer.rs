//! The switch's [`Steer`] over our XDP program's maps (`net_af_xdp` with
//! `xdp_prog=`; built when clang and libbpf are there).

use dpuproxy_dp::xdp::{self, FlowSteer};
use dpuproxy_switch::{Flow, FlowOwner, Path, Steer};

/// Per-flow owners in our XDP program on the port's interface.
#[derive(Debug)]
pub struct XdpSteer(pub FlowSteer);

fn owner(o: FlowOwner) -> xdp::Owner {
    match o {
        FlowOwner::Path(Path::Dpdk) => xdp::Owner::Dpdk,
        FlowOwner::Path(Path::Kernel) => xdp::Owner::Kernel,
        FlowOwner::Hold => xdp::Owner::Hold,
    }
}

fn flow(f: Flow) -> xdp::Flow {
    xdp::Flow {
        remote: f.remote,
        local: f.local,
    }
}

impl Steer for XdpSteer {
    fn set(&self, f: Flow, o: FlowOwner) -> Result<(), String> {
        self.0.set(&flow(f), owner(o)).map_err(|e| e.to_string())
    }

    fn forget(&self, f: Flow) {
        if let Err(e) = self.0.forget(&flow(f)) {
            tracing::debug!(flow = %f, error = %e, "steering entry not removed");
        }
    }

    fn owner(&self, f: Flow) -> Option<FlowOwner> {
        match self.0.owner(&flow(f)).ok()?? {
            xdp::Owner::Dpdk => Some(FlowOwner::Path(Path::Dpdk)),
            xdp::Owner::Kernel => Some(FlowOwner::Path(Path::Kernel)),
            xdp::Owner::Hold => Some(FlowOwner::Hold),
        }
    }

    fn set_default(&self, path: Path) -> Result<(), String> {
        self.0
            .set_default(owner(FlowOwner::Path(path)))
            .map_err(|e| e.to_string())
    }
}

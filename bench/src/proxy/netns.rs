//! A throw-away network namespace for the dpdk target: the backends and
//! the load generator live behind a veth whose other end DPDK drives (the
//! DPDK path has no kernel socket, so its peers must be on a wire).

use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// The namespace, removed (with its veth pair) on drop.
#[derive(Debug)]
pub struct Netns {
    /// `ip netns` name.
    pub name: String,
    /// The root-namespace veth end (DPDK's).
    pub root_if: String,
    /// Our (DPDK) address.
    pub proxy_ip: std::net::Ipv4Addr,
    /// The peers' address inside the namespace.
    pub peer_ip: std::net::Ipv4Addr,
    path: PathBuf,
    /// The namespace of the thread that created it: the last user may drop
    /// this from a thread that entered the new namespace, and the clean-up
    /// commands must run at home.
    home: File,
}

/// Run `ip` with `args`; its stderr is the error.
pub(crate) fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn tx_off(netns: Option<&str>, dev: &str) {
    let mut c = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "ethtool", "-K", dev, "tx", "off"]);
            c
        }
        None => {
            let mut c = Command::new("ethtool");
            c.args(["-K", dev, "tx", "off"]);
            c
        }
    };
    let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
}

impl Netns {
    /// Create `dpb<pid>` with a veth pair; 10.77.250.1 is the proxy's,
    /// 10.77.250.2/24 the peers'.
    pub fn create() -> anyhow::Result<Self> {
        let home = File::open("/proc/thread-self/ns/net")
            .context("cannot open this thread's network namespace")?;
        let pid = std::process::id();
        let name = format!("dpb{pid}");
        let root_if = format!("dpb{pid}a");
        let peer_if = format!("dpb{pid}b");
        let ns = Netns {
            name: name.clone(),
            root_if: root_if.clone(),
            proxy_ip: [10, 77, 250, 1].into(),
            peer_ip: [10, 77, 250, 2].into(),
            path: PathBuf::from(format!("/var/run/netns/{name}")),
            home,
        };
        ip(&["netns", "add", &name])?;
        ip(&[
            "link", "add", &root_if, "type", "veth", "peer", "name", &peer_if,
        ])?;
        ip(&["link", "set", &peer_if, "netns", &name])?;
        ip(&["link", "set", &root_if, "up"])?;
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            "10.77.250.2/24",
            "dev",
            &peer_if,
        ])?;
        ip(&["-n", &name, "link", "set", &peer_if, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        // Kernel-sent TCP must carry real checksums to reach DPDK.
        tx_off(None, &root_if);
        tx_off(Some(&name), &peer_if);
        Ok(ns)
    }

    /// Give the peers' veth end one more address (more client source
    /// addresses: ~28k ephemeral ports each).
    pub fn add_peer_address(&self, addr: std::net::Ipv4Addr) -> anyhow::Result<()> {
        let peer_if = format!("{}b", self.name);
        ip(&[
            "-n",
            &self.name,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &peer_if,
        ])
    }

    /// Move the calling thread into the namespace (threads it then starts
    /// inherit it).
    pub fn enter(&self) -> anyhow::Result<()> {
        enter_path(&self.path, &self.name)
    }
}

/// Move the calling thread into the `ip netns` namespace `name` (threads
/// it then starts inherit it).
pub fn enter_named(name: &str) -> anyhow::Result<()> {
    enter_path(&PathBuf::from(format!("/var/run/netns/{name}")), name)
}

fn enter_path(path: &std::path::Path, name: &str) -> anyhow::Result<()> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    rustix::thread::move_into_link_name_space(
        f.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .with_context(|| format!("setns into {name}"))
}

impl Drop for Netns {
    fn drop(&mut self) {
        let (name, root_if, home) = (&self.name, &self.root_if, &self.home);
        std::thread::scope(|s| {
            let _ = s.spawn(move || {
                // A fresh thread, moved home before running `ip`.
                if rustix::thread::move_into_link_name_space(
                    home.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .is_err()
                {
                    return;
                }
                let _ = ip(&["netns", "del", name]);
                // The veth may outlive a just-killed DPDK process for a
                // moment: retry until it is gone (bounded).
                for _ in 0..20 {
                    if ip(&["link", "show", root_if]).is_err() {
                        break;
                    }
                    let _ = ip(&["link", "del", root_if]);
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            });
        });
    }
}

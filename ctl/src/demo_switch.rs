//! The demo's second part (root only): the same SDK client walk through
//! the DPDK path, and a live switch of that path to kernel mode while the
//! client's progress stream runs.
//!
//! Topology (created here, removed on exit, also on failure): namespace
//! `dpb<pid>` holds the three SDK backends and the client on 10.77.250.2;
//! the proxy (`dpuproxy run --mode dpdk --dpdk-switchable`, a child
//! process) drives the root end of the veth through `net_af_xdp` with our
//! XDP steering, and the kernel path has 10.77.250.1 on that end too.

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dpuproxy_bench::procs::{free_port, wait_listening};
use dpuproxy_bench::proxy::netns::Netns;
use dpuproxy_switch::Path as DataPath;

use crate::switch_admin::post_switch;

/// Why this machine or build cannot run the DPDK part, if it cannot.
fn cannot_run() -> Option<&'static str> {
    if !rustix::process::geteuid().is_root() {
        return Some("it needs root (a network namespace, a veth pair, af_xdp)");
    }
    if !dpuproxy_engine::AVAILABLE {
        return Some("this binary was built without DPDK (libdpdk-dev missing at build time)");
    }
    if !dpuproxy_dp::XDP_STEER {
        return Some(
            "this binary was built without the XDP steering (clang missing at build time)",
        );
    }
    None
}

/// Kills (SIGTERM first for the proxy) its children on drop.
struct Kids(Vec<Child>);

impl Drop for Kids {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run_quiet(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn in_ns(ns: &str, program: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

/// GET `path` from the admin listener: the body.
fn admin_get(admin: SocketAddr, path: &str) -> anyhow::Result<String> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    Ok(reply
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string()))
}

/// Run the DPDK part, or say why it is skipped.
pub fn run(python: &Path, dir: &Path, backend_py: &Path, client_py: &Path) -> anyhow::Result<()> {
    if let Some(why) = cannot_run() {
        println!("demo: DPDK part skipped: {why}");
        return Ok(());
    }
    println!("demo: part 2: the DPDK path (af_xdp on a veth) and a live switch to kernel mode");
    let ns = Netns::create().context("cannot create the demo's namespace")?;
    let (proxy_ip, peer_ip) = (ns.proxy_ip, ns.peer_ip);
    // The kernel path shares the DPDK path's address; timestamps off so a
    // connection the kernel accepts could move back (see the README).
    run_quiet(Command::new("ip").args([
        "addr",
        "add",
        &format!("{proxy_ip}/24"),
        "dev",
        &ns.root_if,
    ]))?;
    let _ = run_quiet(Command::new("sysctl").args([
        "-q",
        "-w",
        &format!("net.ipv6.conf.{}.disable_ipv6=1", ns.root_if),
    ]));
    run_quiet(Command::new("ip").args([
        "netns",
        "exec",
        &ns.name,
        "sysctl",
        "-q",
        "-w",
        "net.ipv4.tcp_timestamps=0",
    ]))?;
    let (cert, key) = (dir.join("dpdk-cert.pem"), dir.join("dpdk-key.pem"));
    dpuproxy_tls::certs::write_self_signed_for(&cert, &key, 2, &[IpAddr::V4(proxy_ip)])?;

    let mut kids = Kids(Vec::new());
    let mut backends = Vec::new();
    for (name, port) in [("b1", 9001), ("b2", 9002), ("b3", 9003)] {
        let mut child = in_ns(&ns.name, python)
            .arg(backend_py)
            .args(["--host", &peer_ip.to_string(), "--port", &port.to_string()])
            .args(["--name", name, "--allow-any-host"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start backend {name}"))?;
        let out = child.stdout.take().context("backend stdout")?;
        kids.0.push(child);
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        if !line.starts_with("READY") {
            bail!("backend {name} did not start: {line:?}");
        }
        backends.push(format!("{peer_ip}:{port}"));
    }
    println!(
        "demo: MCP backends b1-b3 in namespace {} on {peer_ip}:9001-9003",
        ns.name
    );

    let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    let log = dir.join("dpdk-proxy.log");
    let eal = format!(
        "-l 1 --no-huge -m 256 --no-shconf --file-prefix=dpb{} --no-telemetry --no-pci --vdev=net_af_xdp0,iface={}",
        std::process::id(),
        ns.root_if
    );
    let mut proxy = Command::new(std::env::current_exe()?);
    proxy
        .args([
            "run",
            "--mode",
            "dpdk",
            "--dpdk-switchable",
            "--dpdk-eal",
            &eal,
        ])
        .args(["--dpdk-ip", &format!("{proxy_ip}/24")])
        .args(["--listen", &format!("{proxy_ip}:8443")]);
    for b in &backends {
        proxy.args(["--backend", b]);
    }
    proxy
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .args(["--admin", &admin.to_string()])
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    kids.0
        .push(proxy.spawn().context("cannot start the dpdk proxy")?);
    let proxy_index = kids.0.len() - 1;
    wait_listening(
        admin,
        &mut kids.0[proxy_index],
        "the dpdk proxy's admin listener",
        Duration::from_secs(30),
        Some(&log),
    )?;
    // Up once the kernel path runs beside (it starts after the steering).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)?.contains("kernel path ready beside the dpdk path") {
        if Instant::now() > deadline || kids.0[proxy_index].try_wait()?.is_some() {
            bail!(
                "the dpdk proxy did not come up; its log ({}):\n{}",
                log.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "demo: dpuproxy --mode dpdk --dpdk-switchable on https://{proxy_ip}:8443/mcp (net_af_xdp, lcore 1; kernel path beside it), admin http://{admin}"
    );

    let url = format!("https://{proxy_ip}:8443/mcp");
    let (mut client, out) = crate::demo_client::start(
        in_ns(&ns.name, python),
        client_py,
        &url,
        &cert,
        &["--steps", "10"],
    )?;
    let mut switched = None;
    for line in BufReader::new(out).lines() {
        let line = line?;
        println!("  {line}");
        if switched.is_none() && line.contains("progress 3/") {
            let (status, body) = post_switch(admin, DataPath::Kernel, 0)?;
            println!(
                "demo: POST /switch?to=kernel while the progress stream runs -> {status} {body}"
            );
            switched = Some(status);
        }
    }
    let status = client.wait()?;
    println!("demo: what the dpdk proxy's switch counters say");
    for line in admin_get(admin, "/metrics")?.lines() {
        let wanted = [
            "dpuproxy_switch_path{",
            "dpuproxy_switch_moved_total{",
            "dpuproxy_switch_failed_total ",
            "dpuproxy_switch_taken_back_total ",
            "dpuproxy_connections_accepted_total ",
            "dpuproxy_lcore_accepted_total{",
        ];
        if wanted.iter().any(|p| line.starts_with(p)) {
            println!("  {line}");
        }
    }
    println!("  /switch {}", admin_get(admin, "/switch")?);
    // SIGTERM: the proxy drains (bounded), then the rest goes on drop.
    let pid = rustix::process::Pid::from_child(&kids.0[proxy_index]);
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(40);
    while kids.0[proxy_index].try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(kids);
    drop(ns);
    if !status.success() {
        bail!("the demo client failed through the dpdk path ({status}); see its output above");
    }
    match switched {
        Some(200) => Ok(()),
        Some(s) => bail!("the live switch answered HTTP {s}"),
        None => bail!("the progress stream ended before the switch could run"),
    }
}

//! `dpuproxy demo`: three real MCP backends (the official Python SDK), the
//! kernel-mode proxy in this process on a self-signed certificate, and a
//! real SDK client session through it; then what the proxy saw. Run as
//! root, a second part does the same through the DPDK path and switches
//! it live to kernel mode while a progress stream runs
//! ([`crate::demo_switch`]).
//!
//! The backend and client scripts are embedded in the binary and written to
//! a temporary directory, so the demo needs only a Python with `mcp`
//! installed (`scripts/setup.sh` makes `.venv`).

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use dpuproxy_l7::{CoreConfig, Shared};

use crate::admin::{Admin, AdminState, render_backends, render_sessions};
use dpuproxy_bench::procs::{free_port, wait_listening};

const BACKEND_PY: &str = include_str!("../../scripts/mcp_backend.py");
const CLIENT_PY: &str = include_str!("../../scripts/mcp_client_demo.py");

/// Kills its children on drop, so a failing demo leaves nothing behind.
struct Children(Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Which Python to use: `--python`, `$DPUPROXY_PYTHON`, the repo's
/// `.venv`, then `python3`; it must import `mcp`.
fn find_python(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(p) = explicit {
        candidates.push(p);
    }
    if let Ok(p) = std::env::var("DPUPROXY_PYTHON") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    candidates.push(PathBuf::from(".venv/bin/python"));
    candidates.push(PathBuf::from("python3"));
    for c in &candidates {
        let ok = Command::new(c)
            .args(["-c", "import mcp, uvicorn, httpx2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(c.clone());
        }
    }
    bail!(
        "no Python with the MCP SDK found (tried {}); run `bash scripts/setup.sh` first, or pass --python",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Run the demo; returns an error when any step failed.
pub fn run(python: Option<PathBuf>) -> anyhow::Result<()> {
    let python = find_python(python)?;
    let dir = tempfile::Builder::new().prefix("dpuproxy-demo").tempdir()?;
    let backend_py = dir.path().join("mcp_backend.py");
    let client_py = dir.path().join("mcp_client_demo.py");
    std::fs::write(&backend_py, BACKEND_PY)?;
    std::fs::write(&client_py, CLIENT_PY)?;
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    dpuproxy_tls::certs::write_self_signed(&cert, &key, 2)?;
    println!(
        "demo: python {} ; self-signed certificate in {}",
        python.display(),
        dir.path().display()
    );

    let mut children = Children(Vec::new());
    let mut backends = Vec::new();
    for name in ["b1", "b2", "b3"] {
        let port = free_port()?;
        let child = Command::new(&python)
            .arg(&backend_py)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--name",
                name,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start backend {name}"))?;
        children.0.push((name.to_string(), child));
        backends.push((name, port));
    }
    for (i, (name, port)) in backends.iter().enumerate() {
        wait_listening(
            SocketAddr::from((Ipv4Addr::LOCALHOST, *port)),
            &mut children.0[i].1,
            &format!("backend {name}"),
            Duration::from_secs(30),
            None,
        )?;
        println!(
            "demo: MCP backend {name} (Python SDK, stateful Streamable HTTP) on 127.0.0.1:{port}"
        );
    }

    let backend_addrs: Vec<String> = backends
        .iter()
        .map(|(_, p)| format!("127.0.0.1:{p}"))
        .collect();
    let shared = Arc::new(Shared::new(CoreConfig::default(), backend_addrs));
    let mut kcfg =
        dpuproxy_kernel::KernelConfig::new("127.0.0.1:0".parse()?, cert.clone(), key.clone());
    kcfg.workers = 2;
    let path = Arc::new(dpuproxy_driver::PathMetrics::default());
    let proxy = dpuproxy_kernel::start(&kcfg, shared.clone(), path.clone())?;
    let state = AdminState {
        mode: "kernel",
        shared: shared.clone(),
        path,
        control: None,
        kernel: Some(proxy.metrics.clone()),
        ktls: Some(proxy.ktls.clone()),
        dpdk: None,
        switch: None,
        reloads: Default::default(),
    };
    let admin = Admin::start("127.0.0.1:0".parse()?, state.clone())?;
    println!(
        "demo: dpuproxy --mode kernel listening on https://{}/mcp (2 workers), admin http://{}",
        proxy.local_addr, admin.addr
    );
    println!(
        "demo: kTLS {}: {}",
        if proxy.ktls.available {
            "available"
        } else {
            "not available"
        },
        proxy.ktls.reason
    );

    let url = format!("https://{}/mcp", proxy.local_addr);
    let (mut client, out) =
        crate::demo_client::start(Command::new(&python), &client_py, &url, &cert, &[])?;
    for line in BufReader::new(out).lines() {
        println!("  {}", line?);
    }
    let status = client.wait()?;

    println!("demo: what the proxy saw");
    for line in crate::admin::render_metrics(&state).lines() {
        let interesting = [
            "dpuproxy_requests_total{",
            "dpuproxy_sessions_active ",
            "dpuproxy_sessions_learned_total ",
            "dpuproxy_sessions_removed_total{reason=\"deleted\"}",
            "dpuproxy_sse_streams_total ",
            "dpuproxy_sse_events_total ",
            "dpuproxy_stateless_requests_total ",
            "dpuproxy_tls_handshakes_total ",
            "dpuproxy_tls_record_path_total{",
            "dpuproxy_ktls_available ",
            "dpuproxy_errors_total{kind=\"unknown_session\"}",
        ];
        if interesting.iter().any(|p| line.starts_with(p)) {
            println!("  {line}");
        }
    }
    println!("  /sessions {}", render_sessions(&state));
    println!("  /backends {}", render_backends(&state));
    admin.shutdown();
    proxy.shutdown();
    drop(children);
    if !status.success() {
        bail!("the demo client failed ({status}); see its output above");
    }
    crate::demo_switch::run(&python, dir.path(), &backend_py, &client_py)?;
    println!("demo: OK");
    Ok(())
}

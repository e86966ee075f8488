//! Starting the demo's SDK client script, for both parts of the demo.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::Context;

/// Start the demo client (`program` is its Python, possibly behind `ip
/// netns exec`) against `url`, trusting `cert`; its stdout to read.
pub(crate) fn start(
    mut program: Command,
    client_py: &Path,
    url: &str,
    cert: &Path,
    extra: &[&str],
) -> anyhow::Result<(Child, std::process::ChildStdout)> {
    let mut client = program
        .arg(client_py)
        .args(["--url", url])
        .args(extra)
        .arg("--cafile")
        .arg(cert)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the demo client")?;
    let out = client.stdout.take().context("client stdout")?;
    Ok((client, out))
}

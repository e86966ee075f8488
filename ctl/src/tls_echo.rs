//! `dpuproxy tls-echo` (placeholder until the record-layer work lands).

use std::net::SocketAddr;
use std::path::PathBuf;

/// `dpuproxy tls-echo` arguments.
#[derive(clap::Args, Debug)]
pub struct TlsEchoArgs {
    /// Address to listen on.
    #[arg(long)]
    pub listen: SocketAddr,
    /// PEM certificate chain.
    #[arg(long)]
    pub tls_cert: PathBuf,
    /// PEM private key.
    #[arg(long)]
    pub tls_key: PathBuf,
}

/// Run the echo server.
pub fn run(_args: &TlsEchoArgs) -> anyhow::Result<()> {
    anyhow::bail!("tls-echo is not implemented in this build")
}

//! `dpuproxy bench tcp` (placeholder until the userspace TCP work lands).

/// `dpuproxy bench tcp` arguments.
#[derive(clap::Args, Debug)]
pub struct TcpArgs {}

/// Run the benchmark.
pub fn run(_args: &TcpArgs) -> anyhow::Result<()> {
    anyhow::bail!("bench tcp is not implemented in this build")
}

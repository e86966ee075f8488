//! `dpuproxy bench records` (placeholder until the record-layer work lands).

/// `dpuproxy bench records` arguments.
#[derive(clap::Args, Debug)]
pub struct RecordsArgs {}

/// Run the benchmark.
pub fn run(_args: &RecordsArgs) -> anyhow::Result<()> {
    anyhow::bail!("bench records is not implemented in this build")
}

//! `c10k compare`: the command line of the strategy matrix (crate `c10k-lab`).

/// Arguments of `c10k compare`.
#[derive(clap::Args)]
pub struct CompareArgs {}

/// Runs `c10k compare`.
pub fn run(_args: CompareArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}

//! Man pages and shell completions, generated from the clap definition so they never drift
//! from the real command line. Run by hidden subcommands at package build time (`make assets`).

use std::path::Path;

use anyhow::{Context, Result};
use clap_complete::Shell;

/// Writes `<name>.1` and one page per visible subcommand (`<name>-<sub>.1`) into `dir`.
pub fn generate_man(cmd: clap::Command, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("cannot write man pages to {}", dir.display()))
}

/// Writes the completion script for `shell` into `dir` under the shell's usual file name
/// (`nod.bash`, `_nod`, `nod.fish`).
pub fn generate_completions(mut cmd: clap::Command, shell: Shell, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = cmd.get_name().to_owned();
    clap_complete::generate_to(shell, &mut cmd, name, dir)
        .with_context(|| format!("cannot write {shell} completions to {}", dir.display()))?;
    Ok(())
}

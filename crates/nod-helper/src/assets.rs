//! Man pages and shell completions, generated from the clap definition at package build time
//! (`make assets`), so they never drift from the real command line.

use std::io;
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::Cli;

/// Writes `nod-helper.1` and one page per visible subcommand into `dir`.
pub fn generate_man(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(Cli::command(), dir)
}

/// Writes the completion script for `shell` into `dir` (`nod-helper.bash`, `_nod-helper`,
/// `nod-helper.fish`).
pub fn generate_completions(shell: Shell, dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command();
    clap_complete::generate_to(shell, &mut cmd, "nod-helper", dir)?;
    Ok(())
}

//! Man pages and shell completions, generated at package build time (`make assets`) by hidden
//! subcommands.
//!
//! The pages of the `nod` package: nod(1), whose synopsis, options and command reference come
//! from the clap definition so they never drift from the real command line, one page per
//! command, nod-agent.toml(5), and nod-tpm(1) for the program the package also ships. Their
//! hand-written parts are held to the code by the tests in `man_page_tests.rs`,
//! `crates/nod-agent/tests/man_page.rs` and `crates/nod-tpm/tests/man_page.rs`.

use std::path::Path;

use anyhow::{Context, Result};
use clap_complete::Shell;

const NOD_PAGE: &str = include_str!("../man/nod.1.in");
const AGENT_CONFIG_PAGE: &str = include_str!("../../nod-agent/man/nod-agent.toml.5.in");
const TPM_PAGE: &str = include_str!("../../nod-tpm/man/nod-tpm.1.in");

/// Every man page of the package, rendered for the command line `cmd`.
pub fn man_pages(cmd: clap::Command) -> Result<Vec<nod_man::Page>> {
    let mut pages = nod_man::render(cmd, "1", NOD_PAGE)?;
    for (file_name, template) in [
        ("nod-agent.toml.5", AGENT_CONFIG_PAGE),
        ("nod-tpm.1", TPM_PAGE),
    ] {
        pages.push(nod_man::Page {
            file_name: file_name.to_owned(),
            text: nod_man::fill(template, env!("CARGO_PKG_VERSION"))?,
        });
    }
    Ok(pages)
}

/// Writes every man page of the package into `dir`.
pub fn generate_man(cmd: clap::Command, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for page in man_pages(cmd)? {
        let path = dir.join(&page.file_name);
        std::fs::write(&path, page.text)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
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

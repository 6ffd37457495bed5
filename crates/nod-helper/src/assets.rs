//! Man pages and shell completions, generated at package build time (`make assets`).
//!
//! The pages of the `nod-helper` package: nod-helper(8), whose synopsis, options and command
//! reference come from the clap definition so they never drift from the real command line,
//! one page per command, pam_nod(8) and nod-helper.toml(5). Their hand-written parts are held
//! to the code by the tests in `man_page_tests.rs` and in `crates/pam-nod/tests/man_page.rs`.

use std::io;
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::Cli;

const HELPER_PAGE: &str = include_str!("../man/nod-helper.8.in");
const CONFIG_PAGE: &str = include_str!("../man/nod-helper.toml.5.in");
const PAM_PAGE: &str = include_str!("../../pam-nod/man/pam_nod.8.in");

/// Every man page of the package, rendered.
pub fn man_pages() -> Result<Vec<nod_man::Page>, nod_man::Error> {
    let mut pages = nod_man::render(Cli::command(), "8", HELPER_PAGE)?;
    let version = env!("CARGO_PKG_VERSION");
    for (file_name, template) in [("nod-helper.toml.5", CONFIG_PAGE), ("pam_nod.8", PAM_PAGE)] {
        pages.push(nod_man::Page {
            file_name: file_name.to_owned(),
            text: nod_man::fill(template, version)?,
        });
    }
    Ok(pages)
}

/// Writes every man page of the package into `dir`.
pub fn generate_man(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for page in man_pages().map_err(io::Error::other)? {
        std::fs::write(dir.join(&page.file_name), page.text)?;
    }
    Ok(())
}

/// Writes the completion script for `shell` into `dir` (`nod-helper.bash`, `_nod-helper`,
/// `nod-helper.fish`).
pub fn generate_completions(shell: Shell, dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command();
    clap_complete::generate_to(shell, &mut cmd, "nod-helper", dir)?;
    Ok(())
}

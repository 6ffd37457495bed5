//! `nod-helper` binary: parse arguments, run, exit with the decision.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(nod_helper::run(nod_helper::Cli::parse()))
}

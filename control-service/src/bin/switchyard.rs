//! `switchyard`: the operator CLI of the Switchyard control service.

use clap::Parser;

fn main() -> std::process::ExitCode {
    switchyard_control::cli::main_with(switchyard_control::cli::Cli::parse())
}

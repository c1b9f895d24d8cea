//! `switchyard`: the operator CLI. Readable tables by default, `--json` for scripts.
//!
//! Exit codes: 0 success, 1 rejected or failed (invalid policy, unknown stack, ...),
//! 2 usage error, 3 control service unreachable.
//!
//! [`args`] is the command line, [`commands`] runs one verb group each, [`context`]
//! turns the global options into a connection, [`output`] prints results and failures.

use std::process::ExitCode;

pub mod args;
mod commands;
mod context;
pub mod output;

pub use args::{
    AuditCmd, ChangeArgs, Cli, Command, EventsCmd, IncidentsCmd, PolicyCmd, RolloutCmd, StacksCmd,
    TokensCmd,
};
pub use output::{ago, fmt_time, Failure};

/// Parse the process arguments and run. A command line clap rejects is reported like
/// every other failure, so `--json` gets one JSON object for it too; `--help` and
/// `--version` print as usual.
pub fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match <Cli as clap::Parser>::try_parse_from(&args) {
        Ok(cli) => main_with(cli),
        Err(e) => {
            use clap::error::ErrorKind;
            let json_out = args
                .iter()
                .skip(1)
                .take_while(|a| *a != "--")
                .any(|a| a == "--json");
            if !json_out
                || matches!(
                    e.kind(),
                    ErrorKind::DisplayHelp
                        | ErrorKind::DisplayVersion
                        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                )
            {
                e.exit();
            }
            let f = Failure::from_clap(&e);
            output::report(&f, true);
            ExitCode::from(f.code)
        }
    }
}

/// Run the CLI with these arguments; prints to stdout/stderr and returns the exit code.
pub fn main_with(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchyard: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut ctx = context::Ctx::new(&cli);
    match runtime.block_on(commands::run(&mut ctx)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            output::report(&f, cli.json);
            ExitCode::from(f.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn parses_the_documented_commands() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("switchyard").chain(args.iter().copied()))
        };
        assert!(parse(&["policy", "validate", "p.json", "--offline"]).is_ok());
        assert!(parse(&["policy", "rollback", "3", "--json"]).is_ok());
        assert!(parse(&["stacks", "weight", "green", "20"]).is_ok());
        assert!(
            parse(&["stacks", "unhealthy", "green"]).is_err(),
            "--reason is required"
        );
        assert!(parse(&["--server", "http://127.0.0.1:1", "status"]).is_ok());
    }
}

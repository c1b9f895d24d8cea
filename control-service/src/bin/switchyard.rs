//! `switchyard`: the operator CLI of the Switchyard control service.

fn main() -> std::process::ExitCode {
    switchyard_control::cli::main()
}

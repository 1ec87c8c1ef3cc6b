use clap::error::ErrorKind;

use mama::exit::ExitCode;

fn main() {
    // Not a command: mama started again by itself to run the notify
    // commands (see `mama::engine::notify`).
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == mama::engine::notify::SUPERVISOR_ARG)
    {
        std::process::exit(mama::engine::notify::supervisor::main());
    }
    let cli = match mama::cli::parse(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            let code = match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::Ok,
                // `run` reports its own failures as 125, as timeout(1) does.
                _ if is_run_command() => ExitCode::RunFailed,
                _ => ExitCode::Usage,
            };
            std::process::exit(code.code());
        }
    };
    std::process::exit(mama::run(cli));
}

/// Whether the command line asks for `run`, as clap reads it when it
/// passes over the errors it found.
fn is_run_command() -> bool {
    mama::cli::whole_command()
        .ignore_errors(true)
        .try_get_matches()
        .is_ok_and(|m| m.subcommand_name() == Some("run"))
}

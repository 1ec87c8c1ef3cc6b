use clap::Parser;
use clap::error::ErrorKind;

use mama::cli::Cli;
use mama::exit::ExitCode;

fn main() {
    let cli = match Cli::try_parse() {
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

/// Whether the command line asks for `run` (the first word that is not the
/// global `--state PATH`).
fn is_run_command() -> bool {
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--state" {
            args.next();
        } else if !arg.to_string_lossy().starts_with('-') {
            return arg == "run";
        }
    }
    false
}

//! Shell completion scripts: clap_complete's, plus machine names read from
//! the state file (`mama list --names`) where a command takes a machine.
//!
//! - bash: a wrapper around clap's `_mama` completes the machine of every
//!   command whose first argument is one, from the state file that the
//!   command line names (`--state`) or the environment names, and the
//!   field of `--where FIELD=VALUE`.
//! - zsh: the machine argument calls `_mama_machines`; it reads the state
//!   file the environment names (a `--state` on the command line is not
//!   looked at).
//! - fish: one more rule completes the machine from the state file the
//!   environment names (a `--state` on the command line is not looked at),
//!   and one a command the values its arguments name (a setting, `power`'s
//!   action, a field), which clap's script offers for options only.

use std::io::Write;

use clap::ValueEnum;

use crate::error::{Error, Result};

/// The shells `mama completions` writes a script for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// The command that prints machine names, one a line.
const NAMES: &str = "mama list --names 2>/dev/null";

/// The completion script for `shell`.
pub fn script(shell: Shell) -> String {
    let mut cmd = crate::cli::whole_command();
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(generator, &mut cmd, "mama", &mut out);
    let generated = String::from_utf8_lossy(&out).into_owned();
    match shell {
        Shell::Bash => bash(&generated),
        Shell::Zsh => zsh(&generated),
        Shell::Fish => fish(&generated),
    }
}

/// Prints the completion script for `shell` on stdout.
pub fn print(shell: Shell) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(script(shell).as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|source| Error::Io {
            context: "cannot write the completion script".to_string(),
            source,
        })
}

/// The subcommands whose first positional argument is a machine (`run`
/// and `wait` take several, with `--any`).
pub fn machine_commands() -> Vec<String> {
    crate::cli::whole_command()
        .get_subcommands()
        .filter(|sub| {
            sub.get_positionals()
                .next()
                .is_some_and(|arg| arg.get_id() == "machine" || arg.get_id() == "machines")
        })
        .map(|sub| sub.get_name().to_string())
        .collect()
}

/// Every option that takes a value (`--state`, `--job`, ...): the word
/// after it is that value, not an argument.
fn options_with_values() -> Vec<String> {
    let cmd = crate::cli::whole_command();
    let mut options: Vec<String> = cmd
        .get_arguments()
        .chain(cmd.get_subcommands().flat_map(|sub| sub.get_arguments()))
        .filter(|arg| !arg.is_positional() && arg.get_action().takes_values())
        .flat_map(|arg| {
            let long = arg.get_long().map(|l| format!("--{l}"));
            let short = arg.get_short().map(|s| format!("-{s}"));
            long.into_iter().chain(short)
        })
        .collect();
    options.sort();
    options.dedup();
    options
}

/// What `--where` completes to: each field `get` knows, with its `=`.
fn where_fields() -> String {
    crate::model::field::ATTRS
        .iter()
        .map(|a| format!("{}=", a.name))
        .collect::<Vec<_>>()
        .join(" ")
}

/// bash: clap's `_mama`, wrapped so that a machine argument completes from
/// the state file, and the field of `--where` from the fields `get` knows.
fn bash(generated: &str) -> String {
    let commands = machine_commands().join("|");
    let valued = options_with_values().join("|");
    let fields = where_fields();
    let wrapper = format!(
        r#"
# Machine names, from the state file, for the first argument of the
# commands that take a machine; everything else is left to _mama.
_mama_with_machines() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" word sub="" state="" option="" i
    local skip=0 taken=0 pool=0
    # A pool (--any, --where) takes any number of machines, up to `--`.
    for (( i = 1; i < COMP_CWORD; i++ )); do
        case "${{COMP_WORDS[i]}}" in
            --) break ;;
            --any|--where|--where=*) pool=1 ;;
        esac
    done
    for (( i = 1; i < COMP_CWORD; i++ )); do
        word="${{COMP_WORDS[i]}}"
        if (( skip )); then
            # "--state=PATH" may come as three words: --state, =, PATH.
            [[ $word == = ]] && continue
            skip=0
            [[ $option == --state ]] && state="$word"
            continue
        fi
        case "$word" in
            {valued}) skip=1; option="$word" ;;
            --state=*) state="${{word#--state=}}" ;;
            --) taken=1 ;;
            -*) ;;
            *) if [[ -z $sub ]]; then sub="$word"; elif (( ! pool )); then taken=1; fi ;;
        esac
    done
    # The field of --where FIELD=VALUE (the value is left to _mama).
    if (( skip )) && [[ $option == --where && $cur != *=* ]]; then
        local IFS=' '
        COMPREPLY=( $(compgen -W "{fields}" -- "$cur") )
        compopt -o nospace 2>/dev/null
        return 0
    fi
    if (( ! skip && ! taken )) && [[ $cur != -* ]]; then
        case "$sub" in
            {commands})
                local -a with_state=()
                [[ -n $state ]] && with_state=(--state "${{state/#\~/$HOME}}")
                local names
                names="$(mama "${{with_state[@]}}" list --names 2>/dev/null)"
                [[ $sub == clear ]] && names+=$'\nall'
                local IFS=$'\n'
                COMPREPLY=( $(compgen -W "$names" -- "$cur") )
                return 0
                ;;
        esac
    fi
    _mama "$@"
}}
"#
    );
    generated.replace("complete -F _mama ", "complete -F _mama_with_machines ") + &wrapper
}

/// zsh: every machine argument calls `_mama_machines`.
fn zsh(generated: &str) -> String {
    let function = format!(
        r#"(( $+functions[_mama_machines] )) ||
_mama_machines() {{
    local -a machines
    machines=(${{(f)"$({NAMES})"}})
    _wanted machines expl 'machine' compadd -a machines
}}

"#
    );
    let mut script = String::with_capacity(generated.len() + function.len());
    for line in generated.split_inclusive('\n') {
        let is_machine = ["':machine -- ", "'::machine -- ", "'*::machines -- "]
            .iter()
            .any(|start| line.starts_with(start));
        match line.strip_suffix(":_default' \\\n") {
            Some(spec) if is_machine => {
                script.push_str(spec);
                script.push_str(":_mama_machines' \\\n");
            }
            _ => {
                if line.starts_with("if [ \"$funcstack[1]\" = \"_mama\" ]") {
                    script.push_str(&function);
                }
                script.push_str(line);
            }
        }
    }
    if !script.contains("\n_mama_machines() {") {
        script.push_str(&function);
    }
    script
}

/// fish: rules for the machine argument and for the values an argument
/// names.
fn fish(generated: &str) -> String {
    let commands = machine_commands().join(" ");
    let valued = options_with_values().join(" ");
    format!(
        r#"{generated}
# The arguments of the command before the word being completed, one a
# line (options and their values left out); fails after `--`, and where
# the word is an option's value.
function __fish_mama_arguments
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_mama_global_optspecs) -- $cmd 2>/dev/null
    or return 1
    set -l skip 0
    for word in $argv[2..-1]
        if test $skip -eq 1
            set skip 0
        else if contains -- $word {valued}
            set skip 1
        else if test "$word" = "--"
            return 1
        else if not string match -q -- '-*' $word
            echo $word
        end
    end
    test $skip -eq 0
end

# Machine names, from the state file, for the first argument of the
# commands that take a machine.
function __fish_mama_wants_machine
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_mama_global_optspecs) -- $cmd 2>/dev/null
    or return 1
    contains -- "$argv[1]" {commands}
    or return 1
    set -l given (__fish_mama_arguments)
    or return 1
    # A pool (--any, --where) takes any number of machines, up to `--`.
    string match -q -- '--any' $argv
    or string match -q -- '--where*' $argv
    or test (count $given) -eq 0
end
complete -c mama -n '__fish_mama_wants_machine' -f -a '({NAMES})'

# Whether the word being completed is argument number $argv[1] (from 1).
function __fish_mama_is_argument
    set -l given (__fish_mama_arguments)
    or return 1
    test (count $given) -eq (math $argv[1] - 1)
end
{values}"#,
        values = fish_argument_values(),
    )
}

/// fish: the values an argument takes, where it names them (a setting's
/// name, `power`'s action, a shell): clap's fish script offers them only
/// for options.
fn fish_argument_values() -> String {
    let mut rules = String::new();
    for sub in crate::cli::whole_command().get_subcommands() {
        for (at, arg) in sub.get_positionals().enumerate() {
            let values: Vec<String> = arg
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| v.get_name().to_string())
                .collect();
            if values.is_empty() {
                continue;
            }
            rules.push_str(&format!(
                "complete -c mama -n '__fish_mama_using_subcommand {}; and __fish_mama_is_argument {}' -f -a '{}'\n",
                sub.get_name(),
                at + 1,
                values.join(" "),
            ));
        }
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_commands_are_those_taking_a_machine_first() {
        let commands = machine_commands();
        for name in ["info", "delete", "set", "get", "clear", "reserve"] {
            assert!(commands.iter().any(|c| c == name), "{name}: {commands:?}");
        }
        for name in ["release", "release-forced", "wait", "run"] {
            assert!(commands.iter().any(|c| c == name), "{name}: {commands:?}");
        }
        for name in ["list", "add", "completions", "serve"] {
            assert!(!commands.iter().any(|c| c == name), "{name}: {commands:?}");
        }
    }

    #[test]
    fn options_with_values_skip_flags() {
        let options = options_with_values();
        for option in [
            "--state",
            "--job",
            "--timeout",
            "--wait-timeout",
            "--mac",
            "--listen",
        ] {
            assert!(options.iter().any(|o| o == option), "{option}: {options:?}");
        }
        for flag in ["--json", "--no-wait", "--vm", "--help"] {
            assert!(!options.iter().any(|o| o == flag), "{flag}: {options:?}");
        }
    }

    #[test]
    fn zsh_machine_arguments_complete_machines() {
        let script = script(Shell::Zsh);
        let uses = script.matches(":_mama_machines' \\\n").count();
        assert_eq!(uses, machine_commands().len(), "{script}");
        assert_eq!(script.matches("\n_mama_machines() {").count(), 1);
        let defined = script.find("\n_mama_machines() {");
        let dispatched = script.find("if [ \"$funcstack[1]\" = \"_mama\" ]");
        assert!(defined < dispatched, "defined before use");
    }

    #[test]
    fn bash_completion_goes_through_the_wrapper() {
        let script = script(Shell::Bash);
        assert!(!script.contains("complete -F _mama "), "{script}");
        assert!(script.contains("complete -F _mama_with_machines "));
    }
}

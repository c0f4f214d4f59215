//! `sesame completions SHELL` and `sesame man`: what a shell and `man` read, made from the
//! command line's own definition so that they never drift from it.

use clap::CommandFactory;
use clap_complete::Shell;

use crate::args::Cli;

/// Writes the completion script for `shell` to stdout.
pub(crate) fn completions(shell: Shell) -> anyhow::Result<()> {
    let mut command = Cli::command();
    let name = command.get_name().to_owned();
    // Written whole at the end: generating straight to stdout panics on a closed pipe.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut script);
    crate::output::print(script)
}

/// Writes the manual page, in roff, to stdout: the command, every subcommand and flag, and
/// the exit codes.
pub(crate) fn man() -> anyhow::Result<()> {
    let command = Cli::command().after_long_help(EXIT_CODES);
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut page)?;
    // The subcommands' own pages follow, so that one page documents everything.
    for sub in command.get_subcommands() {
        let title = format!("sesame-{}", sub.get_name());
        clap_mangen::Man::new(sub.clone())
            .title(title)
            .render(&mut page)?;
    }
    crate::output::print(page)
}

/// The exit codes, as the manual states them.
const EXIT_CODES: &str = "Exit codes: 0 when the command did what it was asked; 1 when it \
                          failed (the error and, where one helps, a hint are on stderr); 2 for \
                          a usage error (a flag or argument the command does not take).";

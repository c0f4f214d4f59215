//! `sesame`: expose ports from behind NAT, reach them through your own relay, or run the
//! relay. One binary, built on the `sesame-tunnel` and `sesame-relay` crates.
//!
//! # Layout
//!
//! - `args`: the command line (clap); `spec`: the `PORT` forms `expose` accepts;
//! - `commands`: one module per subcommand; `credentials`: what `login` stores, and which
//!   relay, trust and token a command uses;
//! - `status`: what `expose` shows while it runs; `logging`: tracing to stderr;
//! - `report`: errors as one line and a hint; `diagnostics`: a stats line on SIGUSR1.

mod agent_metrics;
mod args;
mod commands;
mod credentials;
mod diagnostics;
mod logging;
mod output;
mod relay_limits;
mod report;
mod spec;
mod status;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::args::{Cli, Command, RelayCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.verbose, cli.log_format);
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Reading stdin blocks a thread that cannot be cancelled: do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `sesame ls | head -1`: the reader has what it wanted.
        Err(error) if output::reader_gone(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprint!("{}", report::report(&error));
            ExitCode::FAILURE
        }
    }
}

/// Every command runs on one thread: a client's tasks (an agent's, a dialer's) hand each chunk
/// to one another (socket, pipe, HTTP/2 stream, connection), and on one thread each hand-over
/// is a plain call instead of a wake-up of another thread. The relay serves its connections
/// on worker threads of its own (`--threads`), each also a runtime on one thread.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    diagnostics::answer_stats_requests();
    let transport = cli.transport();
    let client = cli.client;
    let access = || credentials::resolve(&client);
    match cli.command {
        Command::Relay(RelayCommand::Serve(args)) => commands::relay::serve(*args, transport).await,
        Command::Relay(RelayCommand::Token(command)) => {
            commands::token::run(access()?, command).await
        }
        Command::Expose(args) => commands::expose::run(access()?, args, transport).await,
        Command::Connect(args) => commands::connect::run(access()?, args, transport).await,
        Command::Ls(args) => commands::ls::run(access()?, args).await,
        Command::Login(args) => commands::login::login(&client, args).await,
        Command::Logout(args) => commands::login::logout(&client, args),
        Command::Completions(args) => commands::manual::completions(args.shell),
        Command::Man => commands::manual::man(),
    }
}

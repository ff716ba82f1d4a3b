//! The `rollcall` binary: a thin shim over the libraries.
//!
//! `rollcall serve` runs the server (see `rollcall serve --help`).

#![forbid(unsafe_code)]

mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// rollcall knows which workers of a fleet are really alive.
///
/// Workers register, send heartbeats and say goodbye; when one dies without
/// a word, rollcall marks it offline within about a second of its deadline.
#[derive(Debug, Parser)]
#[command(name = "rollcall", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the rollcall server.
    ///
    /// Example: rollcall serve --listen 0.0.0.0:7373 --stale-after 90s
    Serve(Box<serve::ServeArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::main(*args),
    }
}

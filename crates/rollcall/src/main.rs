//! The `rollcall` binary: a thin shim over the libraries.
//!
//! `rollcall serve` runs the server (see `rollcall serve --help`),
//! `rollcall agent run` runs any program as a worker, `rollcall workers|
//! machines|tokens|cleanup|events` are the admin CLI, and `rollcall backup`
//! copies the SQLite database.

// Denied rather than forbidden: the agent's parent-death signal needs one
// `pre_exec` hook, allowed locally in `agent::sys` with a SAFETY comment.
#![deny(unsafe_code)]

mod admin;
mod agent;
mod alerts;
mod backup;
mod render;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// rollcall knows which workers of a fleet are really alive.
///
/// Workers register, send heartbeats and say goodbye; when one dies without
/// a word, rollcall marks it offline within about a second of its deadline.
#[derive(Debug, Parser)]
#[command(
    name = "rollcall",
    version,
    propagate_version = true,
    after_help = admin::EXIT_CODES
)]
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
    /// Run any program as a worker.
    ///
    /// Example: rollcall agent run --server http://rollcall:7373 --token rc_enroll_… --name render-1 -- ./render
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// List, show, drain, mark offline or delete workers.
    ///
    /// Example: rollcall workers ls --server http://rollcall:7373 --token rc_read_…
    Workers {
        #[command(flatten)]
        conn: admin::Conn,
        #[command(subcommand)]
        cmd: admin::WorkersCommand,
    },
    /// List or show machines.
    ///
    /// Example: rollcall machines show host-a
    Machines {
        #[command(flatten)]
        conn: admin::Conn,
        #[command(subcommand)]
        cmd: admin::MachinesCommand,
    },
    /// Create, list or delete enroll and read tokens.
    ///
    /// Example: rollcall tokens create --kind enroll --name render-fleet
    Tokens {
        #[command(flatten)]
        conn: admin::Conn,
        #[command(subcommand)]
        cmd: admin::TokensCommand,
    },
    /// Run the cleanup tasks now.
    ///
    /// Example: rollcall cleanup stale
    Cleanup {
        #[command(flatten)]
        conn: admin::Conn,
        #[command(subcommand)]
        cmd: admin::CleanupCommand,
    },
    /// Fleet health: availability, crashes, and the machines and workers
    /// that crash most and are down longest.
    ///
    /// Example: rollcall health --window 7d --top 10
    Health {
        #[command(flatten)]
        conn: admin::Conn,
        #[command(flatten)]
        args: admin::HealthArgs,
    },
    /// Copy the SQLite database to a file, safely while the server runs.
    ///
    /// Example: rollcall backup rollcall-backup.db --data-dir ./rollcall-data
    Backup(backup::BackupArgs),
    /// Print the event log.
    ///
    /// Example: rollcall events tail --follow
    Events {
        #[command(flatten)]
        conn: admin::Conn,
        #[command(subcommand)]
        cmd: admin::EventsCommand,
    },
    /// List, show or acknowledge incidents (what the alert rules found).
    ///
    /// Example: rollcall incidents --open
    #[command(args_conflicts_with_subcommands = true)]
    Incidents {
        #[command(flatten)]
        conn: admin::Conn,
        #[command(flatten)]
        ls: admin::IncidentsLs,
        #[command(subcommand)]
        cmd: Option<admin::IncidentsCommand>,
    },
    /// Try the notification channels of a config.
    ///
    /// Example: rollcall alerts test ops --config /etc/rollcall.toml
    #[command(subcommand)]
    Alerts(alerts::AlertsCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::main(*args),
        Command::Agent(cmd) => agent::main(cmd),
        Command::Workers { conn, cmd } => admin::main(conn, |c, conn| admin::workers(c, conn, cmd)),
        Command::Machines { conn, cmd } => {
            admin::main(conn, |c, conn| admin::machines(c, conn, cmd))
        }
        Command::Tokens { conn, cmd } => admin::main(conn, |c, conn| admin::tokens(c, conn, cmd)),
        Command::Cleanup { conn, cmd } => admin::main(conn, |c, conn| admin::cleanup(c, conn, cmd)),
        Command::Events { conn, cmd } => admin::main(conn, |c, conn| admin::events(c, conn, cmd)),
        Command::Health { conn, args } => admin::main(conn, |c, conn| admin::health(c, conn, args)),
        Command::Backup(args) => backup::main(args),
        Command::Incidents { conn, ls, cmd } => {
            let cmd = cmd.unwrap_or(admin::IncidentsCommand::Ls(ls));
            admin::main(conn, |c, conn| admin::incidents(c, conn, cmd))
        }
        Command::Alerts(cmd) => alerts::main(cmd),
    }
}

/// The server URLs of a `--server` value: one, or several replicas
/// separated by commas.
pub(crate) fn server_urls(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_urls_split_on_commas() {
        assert_eq!(super::server_urls("http://a:1"), vec!["http://a:1"]);
        assert_eq!(
            super::server_urls("http://a:1, http://b:2,"),
            vec!["http://a:1", "http://b:2"]
        );
    }
}

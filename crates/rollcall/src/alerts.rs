//! `rollcall alerts …`: channels of a server's config, tried from here.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};
use rollcall_server::alerts::deliver::Deliverer;
use rollcall_server::RawConfig;

/// `rollcall alerts …`
#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Send a test notification through a channel of the config, now, and
    /// report its answer.
    #[command(after_help = "Example:\n  rollcall alerts test ops --config /etc/rollcall.toml")]
    Test(TestArgs),
    /// List the alert rules of a server, or create, replace or delete the
    /// rules made through its API (admin token).
    #[command(after_help = "Examples:\n  rollcall alerts rules ls\n  \
        rollcall alerts rules put gpu-down --kind worker_offline --for 1m --select queue=gpu --channel ops\n  \
        rollcall alerts rules rm gpu-down")]
    Rules {
        #[command(flatten)]
        conn: crate::admin::Conn,
        #[command(subcommand)]
        cmd: Option<Box<crate::admin::RulesCommand>>,
    },
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The channel's name (`[[channel]] name`).
    channel: String,
    /// The server's TOML config, where the channel is declared.
    #[arg(long, env = "ROLLCALL_CONFIG")]
    config: String,
}

/// Exit codes: 0 delivered, 1 the channel refused or did not answer,
/// 2 a bad config or an unknown channel.
pub fn main(cmd: AlertsCommand) -> ExitCode {
    match cmd {
        AlertsCommand::Test(args) => test(args),
        AlertsCommand::Rules { conn, cmd } => crate::admin::main(conn, |c, conn| {
            crate::admin::rules(c, conn, cmd.map(|c| *c))
        }),
    }
}

fn test(args: TestArgs) -> ExitCode {
    let text = match std::fs::read_to_string(&args.config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("rollcall: config file {}: {e}", args.config);
            return ExitCode::from(2);
        }
    };
    let config = match RawConfig::from_toml(&args.config, &text).and_then(RawConfig::resolve) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rollcall: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(channel) = config.alerting.channel(&args.channel).cloned() else {
        let names: Vec<&str> = config
            .alerting
            .channels
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        eprintln!(
            "rollcall: {} declares no channel {:?} (it has: {})",
            args.config,
            args.channel,
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        );
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rollcall: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A store is not needed to send a test; the deliverer only needs the
    // channel, a clock and an HTTP client.
    let result = runtime.block_on(async {
        Deliverer::test_channel(&channel, Arc::new(rollcall_server::SystemClock)).await
    });
    match result {
        Ok(()) => {
            println!(
                "sent a test notification to {} ({})",
                channel.name,
                channel.kind.as_str()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rollcall: {}: {e}", channel.name);
            ExitCode::FAILURE
        }
    }
}

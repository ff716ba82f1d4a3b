//! Registers a worker and heartbeats until Ctrl-C, then goes offline.
//!
//! ```text
//! ROLLCALL_SERVER=http://127.0.0.1:7373 ROLLCALL_TOKEN=rc_enroll_… \
//!     cargo run -p rollcall-client --example heartbeat -- [NAME]
//! ```
//!
//! `ROLLCALL_SERVER` may list several replicas, separated by commas. The
//! worker registers in the background, so it starts even while the server
//! is down; state changes (registered, new session, failures) are printed as
//! they happen. Set `RUST_LOG=rollcall_client=debug` for more detail.

use std::process::ExitCode;

use rollcall_client::{Client, WorkerHandle, WorkerName, WorkerOptions};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let (Ok(servers), Ok(token)) = (
        std::env::var("ROLLCALL_SERVER"),
        std::env::var("ROLLCALL_TOKEN"),
    ) else {
        eprintln!(
            "set ROLLCALL_SERVER (e.g. http://127.0.0.1:7373) and ROLLCALL_TOKEN (an enroll token)"
        );
        return ExitCode::from(2);
    };
    let name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "heartbeat-example".into());
    let name = match WorkerName::parse(&name) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("bad worker name {name:?}: {e}");
            return ExitCode::from(2);
        }
    };

    let client = match Client::builder()
        .servers(servers.split(',').map(str::trim).filter(|s| !s.is_empty()))
        .token(token)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };

    let worker = WorkerHandle::spawn_registering(&client, WorkerOptions::new(name));
    let mut state = worker.subscribe();
    println!("registering… (Ctrl-C to stop)");
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            changed = state.changed() => {
                if changed.is_err() {
                    eprintln!("the worker's background task stopped");
                    return ExitCode::FAILURE;
                }
                let s = state.borrow_and_update().clone();
                println!(
                    "{:?}: worker {} session {} status {} (failures in a row: {})",
                    s.phase,
                    s.worker_id.as_ref().map_or("-", |id| id.as_str()),
                    s.session.map_or("-".to_owned(), |n| n.to_string()),
                    s.status.map_or("-", |st| st.as_str()),
                    s.consecutive_failures,
                );
            }
            _ = &mut ctrl_c => break,
        }
    }

    match worker.shutdown().await {
        Ok(Some(w)) => {
            println!("offline: {} ({})", w.id, w.status);
            ExitCode::SUCCESS
        }
        Ok(None) => {
            println!("never registered; nothing to mark offline");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("could not mark the worker offline: {e}");
            ExitCode::FAILURE
        }
    }
}

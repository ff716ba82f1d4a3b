//! `rollcall agent run … -- CMD [ARG…]`: run any program as a worker.
//!
//! The child starts first and never waits for the server; a
//! [`WorkerHandle`] registers in the background (retrying with backoff and
//! jitter), heartbeats while the child lives and registers again after a
//! 401. SIGINT/SIGTERM are forwarded to the child; when the child ends the
//! worker is marked offline and the agent exits with the child's code
//! (128 + N for signal N). The child gets a parent-death signal (SIGKILL),
//! so it never outlives the agent unsupervised.
//!
//! What the offline says (and so how rollcall classifies it):
//!
//! - The child ended on its own: `exited` with its exit code, or with the
//!   signal that killed it. Exit code 0 is a graceful end; any other code
//!   or a signal is a crash.
//! - The agent was told to stop (SIGINT/SIGTERM, forwarded to the child)
//!   before the child ended: `shutdown`, a graceful end, whatever the
//!   child's status — a child that dies of the forwarded SIGTERM (status
//!   143) did what it was asked. The status is in the agent's log.
//! - The agent itself dies (`kill -9`): it sends nothing, the child dies
//!   with it, and rollcall marks the worker `stale` at its deadline; an
//!   agent started again under the same name before that ends the old
//!   session as `replaced`. Both are crashes.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use clap::{Args, Subcommand};
use rollcall_client::{Client, Labels, MachineId, WorkerHandle, WorkerName, WorkerOptions};
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

/// How long the goodbye (offline) call may take before the agent exits anyway.
const OFFLINE_TIMEOUT: Duration = Duration::from_secs(3);

/// `rollcall agent …`
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Run CMD as a worker: register, heartbeat while it lives, say goodbye
    /// when it ends.
    ///
    /// CMD starts at once, even when the server is unreachable (registration
    /// retries in the background). SIGINT/SIGTERM are forwarded to CMD; when
    /// CMD ends the worker is marked offline and the agent exits with CMD's
    /// exit code (128 + N when CMD was killed by signal N). If the agent
    /// dies, CMD is killed with it.
    ///
    /// The offline is "exited" with CMD's exit code or signal when CMD ended
    /// on its own (exit code 0 counts as a graceful end, anything else as a
    /// crash), or "shutdown" (graceful) when the agent was told to stop
    /// first.
    ///
    /// Exit codes: CMD's own; 126 if CMD could not be started, 127 if it was
    /// not found; 2 for a usage error.
    #[command(
        after_help = "Example:\n  ROLLCALL_SERVER=http://rollcall:7373 ROLLCALL_TOKEN=rc_enroll_… \\\n    rollcall agent run --name render-1 --label queue=gpu -- ./render --gpu 0"
    )]
    Run(AgentRunArgs),
}

/// Flags of `rollcall agent run`.
#[derive(Debug, Args)]
pub struct AgentRunArgs {
    /// The rollcall server's URL; several replicas separated by commas
    /// (tried in order, failing over).
    #[arg(long, env = "ROLLCALL_SERVER", default_value = "http://127.0.0.1:7373")]
    server: String,
    /// An enroll (or admin) token.
    #[arg(long, env = "ROLLCALL_TOKEN", hide_env_values = true)]
    token: String,
    /// The worker's name, unique on its machine ([A-Za-z0-9._:-], 1–128).
    #[arg(long)]
    name: String,
    /// The machine id (default: the host's name).
    #[arg(long)]
    machine_id: Option<String>,
    /// A worker label, key=value; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Ask the server for this heartbeat interval (e.g. 10s); default: the
    /// server's.
    #[arg(long, value_parser = humantime::parse_duration)]
    heartbeat_interval: Option<Duration>,
    /// The program to run and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Entry point of `rollcall agent`.
pub fn main(command: AgentCommand) -> ExitCode {
    match command {
        AgentCommand::Run(args) => run(args),
    }
}

fn run(args: AgentRunArgs) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();

    let options = match options(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("rollcall agent: {e}");
            return ExitCode::from(2);
        }
    };
    let client = match Client::builder()
        .servers(crate::server_urls(&args.server))
        .token(args.token.clone())
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(2))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rollcall agent: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rollcall agent: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // `block_on` runs this future on the main thread, so the child is
    // forked from the main thread: the parent-death signal fires when the
    // thread that forked dies, and the main thread lives as long as the
    // agent.
    runtime.block_on(supervise(args.command, client, options))
}

fn options(args: &AgentRunArgs) -> Result<WorkerOptions, String> {
    let name = WorkerName::parse(&args.name).map_err(|e| format!("invalid --name: {e}"))?;
    let mut options = WorkerOptions::new(name);
    if let Some(id) = &args.machine_id {
        options.machine_id =
            Some(MachineId::parse(id).map_err(|e| format!("invalid --machine-id: {e}"))?);
    }
    options.labels = args.labels.iter().cloned().collect::<Labels>();
    options.heartbeat_interval = args.heartbeat_interval;
    Ok(options)
}

async fn supervise(command: Vec<OsString>, client: Client, options: WorkerOptions) -> ExitCode {
    // Signal handlers first, so a signal that arrives right after the child
    // started is forwarded rather than killing the agent.
    let (mut sigint, mut sigterm) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("rollcall agent: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };

    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..]);
    sys::kill_with_parent(cmd.as_std_mut());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "rollcall agent: cannot start {:?}: {e}",
                command[0].to_string_lossy()
            );
            return ExitCode::from(if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
    };
    let pid = child.id();

    let worker = WorkerHandle::spawn_registering(&client, options);

    let mut stopping = false;
    // `None` when the child could not be waited for: its status is unknown.
    let status: Option<ExitStatus> = loop {
        tokio::select! {
            // Signals first: when a stop request and the child's end are
            // both ready (a service manager signals the whole group), the
            // end is the stop's doing and is reported as a shutdown.
            biased;
            _ = sigint.recv() => {
                stopping = true;
                if let Some(pid) = pid { sys::forward(pid, sys::SIGINT); }
            }
            _ = sigterm.recv() => {
                stopping = true;
                if let Some(pid) = pid { sys::forward(pid, sys::SIGTERM); }
            }
            status = child.wait() => match status {
                Ok(s) => break Some(s),
                Err(e) => {
                    eprintln!("rollcall agent: waiting for the child failed: {e}");
                    break None;
                }
            },
        }
    };

    let goodbye = Goodbye::of(stopping, status);
    tracing::info!(child = %describe(status), "the child ended");
    match tokio::time::timeout(OFFLINE_TIMEOUT, goodbye.send(worker)).await {
        Ok(Ok(Some(w))) => {
            tracing::info!(worker_id = %w.id, offline = %goodbye, "marked the worker offline")
        }
        Ok(Ok(None)) => tracing::info!("the worker was not registered; nothing to mark offline"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not mark the worker offline; rollcall will mark it stale")
        }
        Err(_) => {
            tracing::warn!("marking the worker offline timed out; rollcall will mark it stale")
        }
    }
    ExitCode::from(status.map_or(1, exit_code))
}

/// The offline the agent sends when its child has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goodbye {
    /// The agent was told to stop: a graceful `shutdown`.
    Shutdown,
    /// The child ended on its own: `exited`, with its status when known.
    Exited(Option<rollcall_client::ExitStatus>),
}

impl Goodbye {
    fn of(stopping: bool, status: Option<ExitStatus>) -> Goodbye {
        if stopping {
            Goodbye::Shutdown
        } else {
            Goodbye::Exited(status.and_then(reported))
        }
    }

    async fn send(
        self,
        worker: WorkerHandle,
    ) -> Result<Option<rollcall_client::Worker>, rollcall_client::Error> {
        match self {
            Goodbye::Shutdown => worker.shutdown().await,
            Goodbye::Exited(Some(status)) => worker.exited(status).await,
            Goodbye::Exited(None) => worker.offline(rollcall_client::OfflineReason::Exited).await,
        }
    }
}

impl std::fmt::Display for Goodbye {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Goodbye::Shutdown => f.write_str("shutdown"),
            Goodbye::Exited(Some(rollcall_client::ExitStatus::Code(c))) => {
                write!(f, "exited (exit code {c})")
            }
            Goodbye::Exited(Some(rollcall_client::ExitStatus::Signal(s))) => {
                write!(f, "exited (signal {s})")
            }
            Goodbye::Exited(None) => f.write_str("exited (status unknown)"),
        }
    }
}

/// The child's status as rollcall records it: its exit code, or the signal
/// that killed it. `None` for what a wait never returns (a stopped child)
/// or a signal number outside 1–64.
fn reported(status: ExitStatus) -> Option<rollcall_client::ExitStatus> {
    if let Some(code) = status.code() {
        return u8::try_from(code & 0xff)
            .ok()
            .map(rollcall_client::ExitStatus::Code);
    }
    let sig = u8::try_from(status.signal()?).ok()?;
    (1..=rollcall_client::ExitStatus::MAX_SIGNAL)
        .contains(&sig)
        .then_some(rollcall_client::ExitStatus::Signal(sig))
}

/// The child's status for the log.
fn describe(status: Option<ExitStatus>) -> String {
    match status {
        None => "status unknown".to_owned(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None) => format!("{s}"),
        },
    }
}

/// The child's exit code, or 128 + N when it was killed by signal N.
fn exit_code(status: ExitStatus) -> u8 {
    if let Some(code) = status.code() {
        return u8::try_from(code & 0xff).unwrap_or(1);
    }
    if let Some(sig) = status.signal() {
        return u8::try_from((128 + sig) & 0xff).unwrap_or(1);
    }
    1
}

/// The only unsafe code of the binary: the parent-death signal and
/// forwarding signals.
mod sys {
    use std::os::unix::process::CommandExt;

    pub const SIGINT: i32 = libc::SIGINT;
    pub const SIGTERM: i32 = libc::SIGTERM;

    /// Makes the child get SIGKILL when the thread that forked it (the
    /// agent's main thread) dies.
    #[allow(unsafe_code)]
    pub fn kill_with_parent(cmd: &mut std::process::Command) {
        let parent = i32::try_from(std::process::id()).unwrap_or(0);
        // SAFETY: the hook runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed: prctl, getppid and _exit are
        // plain system calls that neither allocate nor take locks, and the
        // closure captures only an integer.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The agent may have died before prctl took effect.
                if libc::getppid() != parent {
                    libc::_exit(137);
                }
                Ok(())
            });
        }
    }

    /// Sends `sig` to the child.
    #[allow(unsafe_code)]
    pub fn forward(pid: u32, sig: i32) {
        let Ok(pid) = i32::try_from(pid) else { return };
        // SAFETY: kill(2) with a positive pid only sends a signal; it touches
        // no memory of this process.
        let _ = unsafe { libc::kill(pid, sig) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
    }

    #[test]
    fn the_goodbye_follows_how_the_child_ended() {
        use rollcall_client::ExitStatus as Reported;
        let exited = |raw| Goodbye::of(false, Some(ExitStatus::from_raw(raw)));
        assert_eq!(exited(0), Goodbye::Exited(Some(Reported::Code(0))));
        assert_eq!(exited(3 << 8), Goodbye::Exited(Some(Reported::Code(3))));
        assert_eq!(exited(255 << 8), Goodbye::Exited(Some(Reported::Code(255))));
        assert_eq!(exited(9), Goodbye::Exited(Some(Reported::Signal(9))));
        // A core dump flag does not change the signal.
        assert_eq!(
            exited(11 | 0x80),
            Goodbye::Exited(Some(Reported::Signal(11)))
        );
        assert_eq!(Goodbye::of(false, None), Goodbye::Exited(None));
        // Told to stop: a shutdown, however the child ended.
        for raw in [0, 3 << 8, 15, 9] {
            assert_eq!(
                Goodbye::of(true, Some(ExitStatus::from_raw(raw))),
                Goodbye::Shutdown
            );
        }
        assert_eq!(Goodbye::of(true, None), Goodbye::Shutdown);
        assert_eq!(exited(9).to_string(), "exited (signal 9)");
        assert_eq!(exited(3 << 8).to_string(), "exited (exit code 3)");
    }

    #[test]
    fn labels_parse() {
        assert_eq!(parse_label("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(parse_label("=x").is_err());
        assert!(parse_label("x").is_err());
    }
}

//! The admin CLI: `rollcall workers|machines|tokens|cleanup|events|health …`.
//!
//! Human output is an aligned table (status coloured only when stdout is a
//! terminal, times relative: "12s ago"); `--json` prints the contract's JSON
//! for scripts; both are printed through [`crate::render`]. Errors are one
//! line on stderr and a documented exit code (see [`EXIT_CODES`]).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use rollcall_client::{
    Client, Error, ErrorCode, EventQuery, HealthQuery, MachineId, MachineQuery, NewToken,
    OfflineReason, TokenId, TokenKind, TokenScope, WorkerId, WorkerQuery,
};

use crate::render::{
    ago, colour_enabled, crash_text, health_line, kv, labels, last_crash, list_or_none, now_ms,
    paint, paint_event, percent, print_health_lines, print_incident, print_json, print_worker,
    print_workers, printable, scope_text, span, table, Cell,
};

/// The exit codes, shown in `rollcall --help`.
pub const EXIT_CODES: &str = "\
Exit codes (admin commands):
  0  success
  1  any other error (invalid request, conflict, server error, bad answer)
  2  usage error (unknown flag, missing argument)
  3  unauthorized or forbidden (missing, wrong or expired token; token of the wrong kind)
  4  not found (no such worker, machine or token)
  5  server unreachable (connection refused, timeout)
`rollcall agent run` exits with its command's code (128 + N when killed by signal N).";

/// Server and token, shared by every admin command.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// The rollcall server's URL; several replicas separated by commas
    /// (tried in order, failing over).
    #[arg(
        long,
        global = true,
        env = "ROLLCALL_SERVER",
        default_value = "http://127.0.0.1:7373"
    )]
    server: String,
    /// An admin token (a read token suffices for ls/show/tail). Without
    /// one, the admin token the server generated in its data directory is
    /// used, if this user can read it.
    #[arg(long, global = true, env = "ROLLCALL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The server's data directory, where a token is looked for when
    /// neither --token nor ROLLCALL_TOKEN is given: <DIR>/admin.token
    /// (default ./rollcall-data).
    #[arg(long, global = true, env = "ROLLCALL_DATA_DIR", hide_env_values = true)]
    data_dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

/// `rollcall workers …`
#[derive(Debug, Subcommand)]
pub enum WorkersCommand {
    /// List workers.
    #[command(
        after_help = "Example:\n  rollcall workers ls --status online --server http://rollcall:7373"
    )]
    Ls {
        /// Only workers with this status.
        #[arg(long)]
        status: Option<StatusArg>,
        /// Only workers of this machine.
        #[arg(long)]
        machine_id: Option<String>,
    },
    /// Show one worker.
    #[command(after_help = "Examples:\n  rollcall workers show render-1\n  \
        rollcall workers show host-a/render-1\n  \
        rollcall workers show wkr_01JDQ3Z6X8A1B2C3D4E5F6G7H8")]
    Show {
        #[arg(value_name = "WORKER", help = WORKER_HELP)]
        id: String,
    },
    /// Drain a worker: it keeps heartbeating but should take no new work.
    #[command(after_help = "Example:\n  rollcall workers drain host-a/render-1")]
    Drain {
        #[arg(value_name = "WORKER", help = WORKER_HELP)]
        id: String,
    },
    /// Mark a worker offline (reason "shutdown").
    ///
    /// A worker whose process still runs comes back online (in a new
    /// session) with its next heartbeat: to keep it from taking work, drain
    /// it; to lock it out, rm it.
    #[command(after_help = "Example:\n  rollcall workers offline render-1")]
    Offline {
        #[arg(value_name = "WORKER", help = WORKER_HELP)]
        id: String,
    },
    /// Delete a worker: its token is revoked and its record forgotten.
    #[command(after_help = "Example:\n  rollcall workers rm wkr_01JDQ3Z6X8A1B2C3D4E5F6G7H8")]
    Rm {
        #[arg(value_name = "WORKER", help = WORKER_HELP)]
        id: String,
    },
}

/// How a worker may be named on the command line.
const WORKER_HELP: &str = "The worker: its id (wkr_…), its name (render-1), or its machine \
and name (host-a/render-1) when the name is used on several machines";

/// A worker status filter.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StatusArg {
    Online,
    Draining,
    Offline,
}

/// A machine status filter.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MachineStatusArg {
    Online,
    Offline,
}

/// `rollcall machines …`
#[derive(Debug, Subcommand)]
pub enum MachinesCommand {
    /// List machines.
    #[command(after_help = "Example:\n  rollcall machines ls --status offline")]
    Ls {
        /// Only machines with this status.
        #[arg(long)]
        status: Option<MachineStatusArg>,
    },
    /// Show one machine and its workers.
    #[command(after_help = "Example:\n  rollcall machines show host-a")]
    Show {
        /// The machine's id.
        id: String,
    },
}

/// A token kind that may be created.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KindArg {
    Enroll,
    Read,
}

/// `rollcall tokens …`
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create an enroll or read token; the secret is shown only once.
    #[command(after_help = "Examples:\n  \
        rollcall tokens create --kind enroll --name render-fleet --expires-in 30d\n  \
        rollcall tokens create --kind enroll --name gpus --machine 'gpu-*' --label pool=gpu\n\n\
        With --machine or --label, the enroll token registers only workers inside its scope:\n\
        the machine id matches one of the --machine patterns ('*' stands for any run of\n\
        characters, the pattern matches the whole id), and the worker's labels carry every\n\
        --label KEY=VALUE. Other registrations are refused (403).")]
    Create {
        /// What the token may do.
        #[arg(long)]
        kind: KindArg,
        /// A name for people.
        #[arg(long)]
        name: String,
        /// Lifetime (e.g. 12h, 30d); default: never expires.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
        /// Enroll tokens: register only on machines whose id matches this
        /// pattern ('*' = any run of characters); repeatable (any one).
        #[arg(long = "machine", value_name = "PATTERN")]
        machines: Vec<String>,
        /// Enroll tokens: register only workers with this label; repeatable
        /// (all of them).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// List tokens (never their secrets).
    #[command(after_help = "Example:\n  rollcall tokens ls --json")]
    Ls,
    /// Delete a token; it stops working at once.
    #[command(after_help = "Example:\n  rollcall tokens rm tok_01JDQ3Z6X8A1B2C3D4E5F6G7H8")]
    Rm {
        /// The token's id (tok_…).
        id: String,
    },
}

/// `rollcall cleanup …`
#[derive(Debug, Subcommand)]
pub enum CleanupCommand {
    /// Mark workers past their deadline offline (stale) now.
    #[command(after_help = "Example:\n  rollcall cleanup stale")]
    Stale,
    /// Run the full cleanup now: stale sweep, forget old workers and
    /// machines, prune events, drop expired tokens.
    #[command(after_help = "Example:\n  rollcall cleanup all --json")]
    All,
}

/// `rollcall events …`
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print events, oldest first; with --follow keep printing new ones.
    #[command(after_help = "Example:\n  rollcall events tail --follow --after 1200")]
    Tail {
        /// Keep polling for new events (every 500 ms) until interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Start after this seq (default 0: from the oldest kept).
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
}

/// A failure: the one line to print and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub(crate) message: String,
    pub(crate) code: u8,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::Api(a) => match a.code {
                ErrorCode::Unauthorized | ErrorCode::Forbidden => 3,
                ErrorCode::NotFound => 4,
                _ => 1,
            },
            Error::Transport { .. } | Error::StreamIdle(_) => 5,
            _ => 1,
        };
        let message = match &e {
            Error::Api(a) => match a.code {
                ErrorCode::Unauthorized => format!(
                    "unauthorized: the token is missing, unknown, expired or revoked ({})",
                    a.message
                ),
                ErrorCode::Forbidden => {
                    format!("forbidden: this token may not do that ({})", a.message)
                }
                ErrorCode::NotFound => format!("not found: {}", a.message),
                _ => format!("{} ({}): {}", a.code.as_str(), a.status.as_u16(), a.message),
            },
            Error::Transport { url, source } => {
                let mut root: &dyn std::error::Error = source;
                while let Some(next) = root.source() {
                    root = next;
                }
                format!("cannot reach the server at {url}: {root}")
            }
            other => other.to_string(),
        };
        Failure { message, code }
    }
}

fn usage(message: String) -> Failure {
    Failure { message, code: 2 }
}

/// Where the admin command's token came from.
#[derive(Debug)]
enum TokenSource {
    /// `--token` or `ROLLCALL_TOKEN`.
    Given,
    /// The admin token the server generated in its data directory.
    File(PathBuf),
}

/// The token to call with: `--token` / `ROLLCALL_TOKEN`, else the server's
/// generated `<data-dir>/admin.token` when this user can read it (as on the
/// server's own host), else a usage error that says where a token goes.
fn resolve_token(conn: &Conn) -> Result<(String, TokenSource), Failure> {
    if let Some(t) = conn.token.as_ref().filter(|t| !t.is_empty()) {
        return Ok((t.clone(), TokenSource::Given));
    }
    let dir = conn
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("./rollcall-data"));
    let path = dir.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => {
            Ok((text.trim().to_owned(), TokenSource::File(path)))
        }
        Ok(_) => Err(Failure {
            message: format!(
                "no token: {} is empty; pass --token or set ROLLCALL_TOKEN",
                path.display()
            ),
            code: 3,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Failure {
            message: format!(
                "no token: pass --token TOKEN or set ROLLCALL_TOKEN (an admin token; a read \
                 token suffices for ls, show and tail). On the server's host, run this where \
                 its data directory is, or pass --data-dir DIR, to use DIR/admin.token \
                 (no {} here)",
                path.display()
            ),
            code: 3,
        }),
        Err(e) => Err(Failure {
            message: format!(
                "no token: pass --token or set ROLLCALL_TOKEN ({} cannot be read: {e})",
                path.display()
            ),
            code: 3,
        }),
    }
}

/// Runs an admin command and turns its outcome into an exit code.
pub fn main<F>(conn: Conn, f: impl FnOnce(Client, Conn) -> F) -> ExitCode
where
    F: std::future::Future<Output = Result<(), Failure>>,
{
    let result = run(conn, f);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("rollcall: {}", printable(&f.message));
            ExitCode::from(f.code)
        }
    }
}

fn run<F>(conn: Conn, f: impl FnOnce(Client, Conn) -> F) -> Result<(), Failure>
where
    F: std::future::Future<Output = Result<(), Failure>>,
{
    let (token, source) = resolve_token(&conn)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure {
            message: format!("cannot start the runtime: {e}"),
            code: 1,
        })?;
    let client = Client::builder()
        .servers(crate::server_urls(&conn.server))
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(5))
        .token(token)
        .build()
        .map_err(|e| Failure {
            message: e.to_string(),
            code: 2,
        })?;
    runtime.block_on(f(client, conn)).map_err(|mut f| {
        if let (3, TokenSource::File(path)) = (f.code, &source) {
            f.message
                .push_str(&format!(" (the token was read from {})", path.display()));
        }
        f
    })
}

/// The worker a command-line argument names: an id (`wkr_…`), a name, or
/// `MACHINE/NAME`. A name used on several machines is refused with the
/// candidates listed.
async fn resolve_worker(client: &Client, arg: &str) -> Result<WorkerId, Failure> {
    if arg.starts_with(WorkerId::PREFIX) {
        return WorkerId::parse(arg).map_err(|e| usage(format!("invalid worker id {arg:?}: {e}")));
    }
    let (machine, name) = match arg.split_once('/') {
        Some((m, n)) => (
            Some(MachineId::parse(m).map_err(|e| usage(format!("invalid machine id {m:?}: {e}")))?),
            n,
        ),
        None => (None, arg),
    };
    if name.is_empty() {
        return Err(usage(format!(
            "{arg:?} names no worker (expected wkr_…, NAME or MACHINE/NAME)"
        )));
    }
    let query = WorkerQuery {
        machine_id: machine.clone(),
        ..Default::default()
    };
    let mut found: Vec<_> = client
        .list_all_workers(&query)
        .await?
        .into_iter()
        .filter(|w| w.name.as_str() == name)
        .collect();
    match found.len() {
        0 => Err(Failure {
            message: match &machine {
                Some(m) => format!("not found: no worker named {name:?} on machine {m}"),
                None => {
                    format!("not found: no worker named {name:?} (nor is it a worker id, wkr_…)")
                }
            },
            code: 4,
        }),
        1 => Ok(found.remove(0).id),
        n => {
            let candidates: Vec<String> = found
                .iter()
                .map(|w| format!("{}/{} ({}, {})", w.machine_id, w.name, w.id, w.status))
                .collect();
            Err(usage(format!(
                "{n} workers are named {name:?}: {}; name one as MACHINE/NAME or by its id",
                candidates.join(", ")
            )))
        }
    }
}

/// `rollcall workers …`
pub async fn workers(client: Client, conn: Conn, cmd: WorkersCommand) -> Result<(), Failure> {
    match cmd {
        WorkersCommand::Ls { status, machine_id } => {
            let query = WorkerQuery {
                status: status.map(|s| match s {
                    StatusArg::Online => rollcall_client::Status::Online,
                    StatusArg::Draining => rollcall_client::Status::Draining,
                    StatusArg::Offline => rollcall_client::Status::Offline,
                }),
                machine_id: match machine_id {
                    Some(m) => Some(
                        MachineId::parse(&m)
                            .map_err(|e| usage(format!("invalid machine id {m:?}: {e}")))?,
                    ),
                    None => None,
                },
                ..Default::default()
            };
            let workers = client.list_all_workers(&query).await?;
            if conn.json {
                return print_json(&workers);
            }
            print_workers(&workers);
        }
        WorkersCommand::Show { id } => {
            let w = client
                .get_worker(&resolve_worker(&client, &id).await?)
                .await?;
            if conn.json {
                return print_json(&w);
            }
            print_worker(&w);
            let mut lines = Vec::new();
            for window in ["24h", "30d"] {
                let h = client
                    .worker_health(&w.id, &HealthQuery::window(window))
                    .await;
                lines.push((window, h.ok().map(|h| health_line(&h.figures))));
            }
            print_health_lines(&lines);
        }
        WorkersCommand::Drain { id } => {
            let w = client.drain(&resolve_worker(&client, &id).await?).await?;
            if conn.json {
                return print_json(&w);
            }
            println!("{} ({}) is {}", w.id, w.name, w.status);
        }
        WorkersCommand::Offline { id } => {
            let id = resolve_worker(&client, &id).await?;
            let before = client.get_worker(&id).await?;
            let w = client.offline(&id, OfflineReason::Shutdown).await?;
            // Marking offline does not stop a process: one that still
            // heartbeats resumes at its next heartbeat, in a new session.
            let was_live = before.status != rollcall_client::Status::Offline;
            if was_live {
                eprintln!(
                    "note: if {}'s process still runs, its next heartbeat brings it back online \
                     (in a new session); `rollcall workers drain` keeps it from taking work, \
                     `rollcall workers rm` locks it out",
                    w.name
                );
            }
            if conn.json {
                return print_json(&w);
            }
            println!("{} ({}) is {}", w.id, w.name, w.status);
        }
        WorkersCommand::Rm { id } => {
            let id = resolve_worker(&client, &id).await?;
            client.delete_worker(&id).await?;
            if conn.json {
                return print_json(&serde_json::json!({"deleted": id.as_str()}));
            }
            println!("deleted {id}");
        }
    }
    Ok(())
}

/// `rollcall machines …`
pub async fn machines(client: Client, conn: Conn, cmd: MachinesCommand) -> Result<(), Failure> {
    match cmd {
        MachinesCommand::Ls { status } => {
            let query = MachineQuery {
                status: status.map(|s| match s {
                    MachineStatusArg::Online => rollcall_client::MachineStatus::Online,
                    MachineStatusArg::Offline => rollcall_client::MachineStatus::Offline,
                }),
                ..Default::default()
            };
            let machines = client.list_all_machines(&query).await?;
            if conn.json {
                return print_json(&machines);
            }
            let now = now_ms();
            let rows = machines
                .iter()
                .map(|m| {
                    vec![
                        Cell::plain(m.id.to_string()),
                        Cell::status(m.status.as_str()),
                        Cell::plain(format!("{}/{}", m.workers_online, m.workers_total)),
                        Cell::plain(m.hostname.clone().unwrap_or_else(|| "-".into())),
                        Cell::plain(ago(now, m.last_seen_at)),
                        Cell::plain(ago(now, m.status_changed_at)),
                    ]
                })
                .collect();
            table(
                &["ID", "STATUS", "WORKERS", "HOSTNAME", "LAST SEEN", "SINCE"],
                rows,
            );
        }
        MachinesCommand::Show { id } => {
            let id = MachineId::parse(&id)
                .map_err(|e| usage(format!("invalid machine id {id:?}: {e}")))?;
            let m = client.get_machine(&id).await?;
            if conn.json {
                return print_json(&m);
            }
            let now = now_ms();
            let mm = &m.machine;
            let colour = colour_enabled();
            kv(&[
                ("id", mm.id.to_string()),
                ("status", paint(mm.status.as_str(), colour)),
                (
                    "hostname",
                    mm.hostname.clone().unwrap_or_else(|| "-".into()),
                ),
                ("labels", labels(&mm.labels)),
                (
                    "workers",
                    format!("{} online of {}", mm.workers_online, mm.workers_total),
                ),
                ("first seen", ago(now, mm.first_seen_at)),
                ("last seen", ago(now, mm.last_seen_at)),
                ("status changed", ago(now, mm.status_changed_at)),
            ]);
            let mut lines = Vec::new();
            for window in ["24h", "30d"] {
                let h = client
                    .machine_health(&id, &HealthQuery::window(window))
                    .await;
                lines.push((window, h.ok().map(|h| health_line(&h.figures))));
            }
            print_health_lines(&lines);
            println!();
            print_workers(&m.workers);
        }
    }
    Ok(())
}

/// `rollcall health`.
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// The last `<n>m`, `<n>h` or `<n>d`: 1h, 24h, 7d, 30d…
    #[arg(long, default_value = "7d")]
    window: String,
    /// How many machines and workers each ranking lists (1–1000).
    #[arg(long, default_value_t = 20)]
    top: u32,
    /// Only workers with this label (and their machines); repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
}

/// `rollcall health`: the fleet's availability and crashes over a window,
/// and the machines and workers that crash most and are down longest.
pub async fn health(client: Client, conn: Conn, args: HealthArgs) -> Result<(), Failure> {
    let labels = args
        .labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| usage(format!("--label must be KEY=VALUE, got {l:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let query = HealthQuery {
        top: Some(args.top),
        labels,
        ..HealthQuery::window(args.window.clone())
    };
    let f = client.fleet_health(&query).await?;
    if conn.json {
        return print_json(&f);
    }
    let now = now_ms();
    kv(&[
        (
            "window",
            format!("{} ({} to {})", args.window, f.from, f.to),
        ),
        (
            "fleet",
            format!("{} workers on {} machines", f.workers, f.machines),
        ),
        ("availability", percent(f.availability)),
        ("crashes", crash_text(&f.crashes)),
        ("went stale", format!("{} times", f.crashes.stale)),
        (
            "other offlines",
            format!(
                "{} graceful, {} administrative",
                f.graceful, f.administrative
            ),
        ),
        ("no data", span(f.no_data_ms)),
    ]);
    let machine_rows = |ms: &[rollcall_client::RankedMachine]| {
        ms.iter()
            .map(|m| {
                vec![
                    Cell::plain(m.machine_id.to_string()),
                    Cell::plain(m.crashes.total.to_string()),
                    Cell::plain(format!(
                        "{}/{}/{}",
                        m.crashes.stale, m.crashes.replaced, m.crashes.exited
                    )),
                    Cell::plain(percent(m.availability)),
                    Cell::plain(span(m.down_ms)),
                    Cell::plain(m.mtbf_ms.map_or_else(|| "-".into(), span)),
                    Cell::plain(last_crash(now, m.last_crash.as_ref())),
                ]
            })
            .collect::<Vec<_>>()
    };
    let worker_rows = |ws: &[rollcall_client::RankedWorker]| {
        ws.iter()
            .map(|w| {
                vec![
                    Cell::plain(format!(
                        "{}/{}",
                        w.machine_id,
                        w.name
                            .as_ref()
                            .map_or_else(|| w.worker_id.to_string(), |n| n.to_string())
                    )),
                    Cell::plain(w.crashes.total.to_string()),
                    Cell::plain(format!(
                        "{}/{}/{}",
                        w.crashes.stale, w.crashes.replaced, w.crashes.exited
                    )),
                    Cell::plain(percent(w.availability)),
                    Cell::plain(span(w.down_ms)),
                    Cell::plain(w.mtbf_ms.map_or_else(|| "-".into(), span)),
                    Cell::plain(last_crash(now, w.last_crash.as_ref())),
                ]
            })
            .collect::<Vec<_>>()
    };
    let headers = |first: &'static str| {
        [
            first,
            "CRASHES",
            "STALE/REPLACED/EXITED",
            "AVAILABLE",
            "DOWN",
            "MTBF",
            "LAST CRASH",
        ]
    };
    for (title, rows, first) in [
        (
            "Machines with the most crashes",
            machine_rows(&f.top_machines_by_crashes),
            "MACHINE",
        ),
        (
            "Machines down longest",
            machine_rows(&f.top_machines_by_downtime),
            "MACHINE",
        ),
        (
            "Workers with the most crashes",
            worker_rows(&f.top_workers_by_crashes),
            "WORKER",
        ),
        (
            "Workers down longest",
            worker_rows(&f.top_workers_by_downtime),
            "WORKER",
        ),
    ] {
        println!();
        println!("{title}:");
        if rows.is_empty() {
            println!("  none");
        } else {
            table(&headers(first), rows);
        }
    }
    Ok(())
}

/// `rollcall tokens …`
pub async fn tokens(client: Client, conn: Conn, cmd: TokensCommand) -> Result<(), Failure> {
    match cmd {
        TokensCommand::Create {
            kind,
            name,
            expires_in,
            machines,
            labels,
        } => {
            let kind = match kind {
                KindArg::Enroll => TokenKind::Enroll,
                KindArg::Read => TokenKind::Read,
            };
            let mut new = NewToken::new(kind, name);
            if let Some(d) = expires_in {
                new = new.expires_in(d);
            }
            if let Some(scope) = scope_args(kind, machines, &labels)? {
                new = new.scope(scope);
            }
            let t = client.create_token(&new).await?;
            if conn.json {
                return print_json(&serde_json::json!({
                    "id": t.id, "kind": t.kind, "name": t.name,
                    "token": t.token.expose(), "expires_at": t.expires_at,
                    "scope": t.scope,
                }));
            }
            let now = now_ms();
            let mut pairs = vec![
                ("id", t.id.to_string()),
                ("kind", t.kind.to_string()),
                ("name", t.name.clone()),
                (
                    "expires",
                    t.expires_at.map_or_else(|| "never".into(), |e| ago(now, e)),
                ),
            ];
            if let Some(scope) = &t.scope {
                pairs.push(("scope", scope_text(scope)));
            }
            pairs.push(("token", t.token.expose().to_owned()));
            kv(&pairs);
            eprintln!("(the token is shown only this once)");
        }
        TokensCommand::Ls => {
            let tokens = client.list_all_tokens().await?;
            if conn.json {
                return print_json(&tokens);
            }
            let now = now_ms();
            let rows = tokens
                .iter()
                .map(|t| {
                    vec![
                        Cell::plain(t.id.to_string()),
                        Cell::plain(t.kind.to_string()),
                        Cell::plain(t.name.clone()),
                        Cell::plain(ago(now, t.created_at)),
                        Cell::plain(t.expires_at.map_or_else(|| "never".into(), |e| ago(now, e))),
                        Cell::plain(
                            t.last_used_at
                                .map_or_else(|| "never".into(), |e| ago(now, e)),
                        ),
                        Cell::plain(t.scope.as_ref().map_or_else(|| "-".into(), scope_text)),
                    ]
                })
                .collect();
            table(
                &[
                    "ID",
                    "KIND",
                    "NAME",
                    "CREATED",
                    "EXPIRES",
                    "LAST USED",
                    "SCOPE",
                ],
                rows,
            );
        }
        TokensCommand::Rm { id } => {
            let id =
                TokenId::parse(&id).map_err(|e| usage(format!("invalid token id {id:?}: {e}")))?;
            client.delete_token(&id).await?;
            if conn.json {
                return print_json(&serde_json::json!({"deleted": id.as_str()}));
            }
            println!("deleted {id}");
        }
    }
    Ok(())
}

/// The scope `--machine` and `--label` ask for, if any.
fn scope_args(
    kind: TokenKind,
    machines: Vec<String>,
    labels: &[String],
) -> Result<Option<TokenScope>, Failure> {
    if machines.is_empty() && labels.is_empty() {
        return Ok(None);
    }
    if kind != TokenKind::Enroll {
        return Err(usage(
            "--machine and --label limit enroll tokens only (--kind enroll)".into(),
        ));
    }
    let mut required = std::collections::BTreeMap::new();
    for l in labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| usage(format!("--label must be KEY=VALUE, got {l:?}")))?;
        if required.insert(k.to_owned(), v.to_owned()).is_some() {
            return Err(usage(format!("--label {k}=… is given twice")));
        }
    }
    let machines = (!machines.is_empty()).then_some(machines);
    TokenScope::parse_input(machines, required)
        .map(Some)
        .map_err(|e| usage(format!("invalid --machine or --label: {e}")))
}

/// `rollcall cleanup …`
pub async fn cleanup(client: Client, conn: Conn, cmd: CleanupCommand) -> Result<(), Failure> {
    match cmd {
        CleanupCommand::Stale => {
            let r = client.cleanup_stale().await?;
            if conn.json {
                return print_json(&r);
            }
            println!(
                "marked {} worker(s) offline; machines affected: {}",
                r.marked_offline_count,
                list_or_none(&r.affected_machine_ids)
            );
        }
        CleanupCommand::All => {
            let r = client.cleanup_all().await?;
            if conn.json {
                return print_json(&r);
            }
            kv(&[
                ("marked stale", r.stale.marked_offline_count.to_string()),
                (
                    "machines affected",
                    list_or_none(&r.stale.affected_machine_ids),
                ),
                ("forgotten workers", r.forgotten_workers.to_string()),
                ("forgotten machines", r.forgotten_machines.to_string()),
                ("pruned events", r.pruned_events.to_string()),
                ("expired tokens", r.expired_tokens.to_string()),
                ("took", format!("{} ms", r.duration_ms)),
            ]);
        }
    }
    Ok(())
}

/// `rollcall events …`
pub async fn events(client: Client, conn: Conn, cmd: EventsCommand) -> Result<(), Failure> {
    let EventsCommand::Tail { follow, after } = cmd;
    let mut after = after;
    let colour = colour_enabled();
    loop {
        let page = client
            .list_events(&EventQuery {
                after: Some(after),
                limit: Some(1000),
                ..Default::default()
            })
            .await?;
        let more = !page.is_last();
        let mut out = std::io::stdout().lock();
        for e in &page.items {
            after = after.max(e.seq);
            let line = if conn.json {
                serde_json::to_string(e).unwrap_or_default()
            } else {
                let mut line = format!(
                    "{:>6}  {}  {}  {:<12}  {}",
                    e.seq,
                    e.at,
                    paint_event(e.event_type.as_str(), colour),
                    e.machine_id,
                    e.worker_id.as_ref().map_or("-", WorkerId::as_str),
                );
                if let Some(r) = e.reason {
                    line.push_str(&format!("  reason={r}"));
                }
                if let Some(s) = e.session {
                    line.push_str(&format!("  session={s}"));
                }
                if let Some(l) = e.detection_lag_ms {
                    line.push_str(&format!("  lag={l}ms"));
                }
                if let Some(c) = e.exit_code {
                    line.push_str(&format!("  exit_code={c}"));
                }
                if let Some(s) = e.signal {
                    line.push_str(&format!("  signal={s}"));
                }
                if let Some(class) = e.offline_class() {
                    line.push_str(&format!("  class={class}"));
                }
                line
            };
            if writeln!(out, "{line}").is_err() {
                return Ok(()); // stdout closed (e.g. `| head`)
            }
        }
        let _ = out.flush();
        drop(out);
        if more {
            continue;
        }
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `rollcall incidents …`
#[derive(Debug, Subcommand)]
pub enum IncidentsCommand {
    /// List incidents, newest first (also without `ls`).
    #[command(after_help = "Example:\n  rollcall incidents ls --open")]
    Ls(IncidentsLs),
    /// Show one incident with everything the rule knows.
    Show { id: String },
    /// Acknowledge an incident (admin token): someone is on it.
    #[command(after_help = "Example:\n  rollcall incidents ack inc_01JE… --by alice")]
    Ack {
        id: String,
        /// Who acknowledges (default: admin).
        #[arg(long, default_value = "admin")]
        by: String,
    },
}

/// What `rollcall incidents [ls]` lists.
#[derive(Debug, Clone, Args)]
pub struct IncidentsLs {
    /// Only open incidents.
    #[arg(long, conflicts_with = "status")]
    open: bool,
    /// Only incidents of this status: pending, open or resolved.
    #[arg(long)]
    status: Option<String>,
    /// At most this many (1-1000).
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

pub async fn incidents(client: Client, conn: Conn, cmd: IncidentsCommand) -> Result<(), Failure> {
    match cmd {
        IncidentsCommand::Ls(IncidentsLs {
            open,
            status,
            limit,
        }) => {
            let status = if open { Some("open".into()) } else { status };
            let page = client
                .list_incidents(&rollcall_client::IncidentQuery {
                    status,
                    cursor: None,
                    limit: Some(limit),
                })
                .await?;
            if conn.json {
                return print_json(&page.items);
            }
            let rows = page
                .items
                .iter()
                .map(|i| {
                    vec![
                        Cell::plain(i.id.clone()),
                        Cell::plain(i.status.clone()),
                        Cell::plain(i.severity.clone()),
                        Cell::plain(i.rule.clone()),
                        Cell::plain(i.opened_at.clone().unwrap_or_else(|| "-".into())),
                        Cell::plain(if i.acked_by.is_some() { "yes" } else { "no" }.into()),
                        Cell::plain(i.summary.clone()),
                    ]
                })
                .collect();
            table(
                &[
                    "ID", "STATUS", "SEVERITY", "RULE", "OPENED", "ACKED", "SUMMARY",
                ],
                rows,
            );
            Ok(())
        }
        IncidentsCommand::Show { id } => {
            let i = client.get_incident(&id).await?;
            if conn.json {
                return print_json(&i);
            }
            print_incident(&i);
            Ok(())
        }
        IncidentsCommand::Ack { id, by } => {
            let i = client.ack_incident(&id, &by).await?;
            if conn.json {
                return print_json(&i);
            }
            print_incident(&i);
            Ok(())
        }
    }
}

/// `rollcall alerts rules …`
#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// List the rules: the config file's, then those made through the API.
    Ls,
    /// Create or replace a rule (admin token). Keys left out take their
    /// defaults (docs/ALERTS.md).
    Put {
        /// The rule's name: 1-64 characters of A-Z a-z 0-9 - _ .
        name: String,
        /// worker_offline, worker_crashes, machine_offline or mass_failure.
        #[arg(long)]
        kind: String,
        /// Default critical.
        #[arg(long)]
        severity: Option<String>,
        /// A label the worker (the machine, for machine_offline) must
        /// carry, as KEY=VALUE; repeat for more.
        #[arg(long = "select", value_name = "KEY=VALUE")]
        select: Vec<String>,
        /// A channel of the server's config to notify; repeat for more.
        #[arg(long = "channel", required = true)]
        channels: Vec<String>,
        /// worker_offline, machine_offline: how long the condition must hold.
        #[arg(long = "for", value_name = "DURATION")]
        for_: Option<String>,
        /// worker_crashes: this many crashes…
        #[arg(long)]
        crashes: Option<u32>,
        /// …within this long.
        #[arg(long, value_name = "DURATION")]
        within: Option<String>,
        /// mass_failure: this share (1-100) of the selected live workers…
        #[arg(long)]
        percent: Option<u32>,
        /// …crashing within this long.
        #[arg(long, value_name = "DURATION")]
        window: Option<String>,
    },
    /// Delete a rule made through the API (admin token); its open
    /// incidents resolve.
    Rm { name: String },
}

pub async fn rules(client: Client, conn: Conn, cmd: Option<RulesCommand>) -> Result<(), Failure> {
    let ms = |flag: &str, v: Option<String>| -> Result<Option<u64>, Failure> {
        v.map(|s| {
            humantime::parse_duration(&s)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .map_err(|e| usage(format!("--{flag} {s:?}: {e} (write e.g. 30s, 5m, 1h)")))
        })
        .transpose()
    };
    match cmd.unwrap_or(RulesCommand::Ls) {
        RulesCommand::Ls => {
            let rules = client.list_alert_rules().await?;
            if conn.json {
                return print_json(&rules);
            }
            let rows = rules
                .iter()
                .map(|r| {
                    let mut what = Vec::new();
                    let d = |ms: u64| {
                        humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
                    };
                    if let Some(f) = r.for_ms.filter(|&f| f > 0) {
                        what.push(format!("for {}", d(f)));
                    }
                    if let (Some(n), Some(w)) = (r.crashes, r.within_ms) {
                        what.push(format!("{n} crashes within {}", d(w)));
                    }
                    if let (Some(p), Some(w)) = (r.percent, r.window_ms) {
                        what.push(format!("{p}% within {}", d(w)));
                    }
                    for (k, v) in &r.select {
                        what.push(format!("{k}={v}"));
                    }
                    if let Some(p) = &r.problem {
                        what.push(format!("NOT IN FORCE: {p}"));
                    }
                    vec![
                        Cell::plain(r.name.clone()),
                        Cell::plain(r.source.clone()),
                        Cell::plain(r.kind.clone()),
                        Cell::plain(r.severity.clone()),
                        Cell::plain(r.channels.join(",")),
                        Cell::plain(what.join(" · ")),
                    ]
                })
                .collect();
            table(
                &[
                    "NAME",
                    "SOURCE",
                    "KIND",
                    "SEVERITY",
                    "CHANNELS",
                    "CONDITION",
                ],
                rows,
            );
            Ok(())
        }
        RulesCommand::Put {
            name,
            kind,
            severity,
            select,
            channels,
            for_,
            crashes,
            within,
            percent,
            window,
        } => {
            let mut labels = std::collections::BTreeMap::new();
            for pair in select {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| usage(format!("--select {pair:?}: write KEY=VALUE")))?;
                labels.insert(k.to_owned(), v.to_owned());
            }
            let spec = rollcall_client::AlertRuleSpec {
                kind,
                severity,
                select: labels,
                channels,
                for_ms: ms("for", for_)?,
                crashes,
                within_ms: ms("within", within)?,
                percent,
                window_ms: ms("window", window)?,
            };
            let rule = client.put_alert_rule(&name, &spec).await?;
            if conn.json {
                return print_json(&rule);
            }
            println!("alert rule {} ({}) is in force", rule.name, rule.kind);
            Ok(())
        }
        RulesCommand::Rm { name } => {
            client.delete_alert_rule(&name).await?;
            if !conn.json {
                println!("deleted alert rule {name}");
            }
            Ok(())
        }
    }
}

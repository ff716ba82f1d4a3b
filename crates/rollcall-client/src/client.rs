//! [`Client`]: one typed method per endpoint of the HTTP contract, over one
//! or more server URLs.
//!
//! # Failover
//!
//! With several URLs (the replicas of a PostgreSQL HA deployment), a call
//! starts at the replica that answered last and moves on to the next when
//! the current one
//!
//! - cannot be connected to (always safe: nothing was sent),
//! - answers 503 `unavailable` (it did not act on the request),
//! - or, for calls that are safe to repeat (GETs, heartbeats, drain,
//!   offline), times out or answers 502/504.
//!
//! Calls that are not safe to repeat (registering, creating or deleting a
//! token or a worker, cleanup) are not sent twice once a replica may have
//! acted on them: their error is returned. A call makes at most one pass over
//! the replicas; retrying later with backoff is the caller's business (the
//! worker handle does it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use rollcall_core::{ExitStatus, MachineId, OfflineReason, TokenId, WorkerId};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{ApiError, Error};
use crate::health::{FleetHealth, HealthQuery, MachineHealth, WorkerHealth};
use crate::model::{
    BatchHeartbeat, BatchHeartbeatResult, BatchRequest, BatchResponse, CreatedToken, Event,
    FullCleanup, HeartbeatAck, Machine, MachineWithWorkers, NewToken, OfflineRequest, Page,
    RegisterRequest, Registration, StaleCleanup, Token, Worker,
};
use crate::query::{EventQuery, MachineQuery, PageQuery, Params, WorkerQuery, MAX_LIMIT};
use crate::secret::TokenSecret;
use crate::sse::EventStream;

/// The default time limit of one request to one replica.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The default time limit for connecting to one replica.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the event stream may be silent: three of the server's 15 s
/// keep-alive periods.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(45);

/// What the replicas of one client share, whatever token each clone holds.
#[derive(Debug)]
struct Shared {
    /// The HTTP client: one connection pool for all clones.
    http: reqwest::Client,
    /// The replicas' base URLs, in the order given.
    servers: Vec<Url>,
    /// The replica that answered last; calls start there so that a dead
    /// replica costs one failed connection, not one per call.
    current: AtomicUsize,
    /// The limit of one request to one replica.
    timeout: Duration,
    /// How long the event stream may be silent.
    stream_idle_timeout: Duration,
}

/// An async client for a rollcall server (or several replicas of one).
///
/// Cheap to clone: clones share the connection pool and the failover state.
/// [`Client::with_token`] makes a clone that authenticates differently,
/// e.g. with a worker's own token for heartbeats.
///
/// ```no_run
/// # async fn demo() -> Result<(), rollcall_client::Error> {
/// use rollcall_client::{Client, Status, WorkerQuery};
///
/// let client = Client::builder()
///     .server("http://rollcall-1:7373")
///     .server("http://rollcall-2:7373")
///     .token("rc_read_…")
///     .build()?;
/// let online = client
///     .list_all_workers(&WorkerQuery { status: Some(Status::Online), ..Default::default() })
///     .await?;
/// println!("{} workers online", online.len());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    /// The bearer token sent with every call (except the public endpoints).
    token: Option<TokenSecret>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let servers: Vec<&str> = self.shared.servers.iter().map(Url::as_str).collect();
        f.debug_struct("Client")
            .field("servers", &servers)
            .field("token", &self.token)
            .field("timeout", &self.shared.timeout)
            .finish_non_exhaustive()
    }
}

/// Configures and builds a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    servers: Vec<String>,
    token: Option<TokenSecret>,
    timeout: Duration,
    connect_timeout: Duration,
    stream_idle_timeout: Duration,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            servers: Vec::new(),
            token: None,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            stream_idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
        }
    }
}

impl ClientBuilder {
    /// Adds a server (replica) base URL, e.g. `http://127.0.0.1:7373`. A
    /// path prefix (`http://lb/rollcall`) is kept. Replicas are tried in the
    /// order added.
    pub fn server(mut self, url: impl Into<String>) -> Self {
        self.servers.push(url.into());
        self
    }

    /// Adds several server base URLs.
    pub fn servers<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.servers.extend(urls.into_iter().map(Into::into));
        self
    }

    /// The bearer token to send.
    pub fn token(mut self, token: impl Into<TokenSecret>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The time limit of one request to one replica (default 10 s). With
    /// failover, a call may take up to this times the number of replicas.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The time limit for connecting to one replica (default 5 s, never more
    /// than the request timeout).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long the event stream may be silent before it is presumed dead
    /// (default 45 s; the server sends a keep-alive at least every 15 s).
    pub fn stream_idle_timeout(mut self, timeout: Duration) -> Self {
        self.stream_idle_timeout = timeout;
        self
    }

    /// Checks the URLs and builds the client.
    ///
    /// `https` URLs are accepted, but this crate builds reqwest without a
    /// TLS backend; enable one (e.g. reqwest's `rustls-tls` feature) in the
    /// final binary to use them.
    pub fn build(self) -> Result<Client, Error> {
        if self.servers.is_empty() {
            return Err(Error::NoServers);
        }
        let servers = self
            .servers
            .iter()
            .map(|s| parse_base_url(s))
            .collect::<Result<Vec<_>, _>>()?;
        let http = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout.min(self.timeout))
            .user_agent(concat!("rollcall-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(Error::Build)?;
        Ok(Client {
            shared: Arc::new(Shared {
                http,
                servers,
                current: AtomicUsize::new(0),
                timeout: self.timeout,
                stream_idle_timeout: self.stream_idle_timeout,
            }),
            token: self.token,
        })
    }
}

/// Parses and checks one base URL.
fn parse_base_url(s: &str) -> Result<Url, Error> {
    let invalid = |reason: &str| Error::InvalidUrl {
        url: s.to_owned(),
        reason: reason.to_owned(),
    };
    let mut url = Url::parse(s.trim()).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if url.cannot_be_a_base() || url.host().is_none() {
        return Err(invalid("not a base URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "credentials in the URL are not supported; use a token",
        ));
    }
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// Whether a failed call may be sent again to another replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Safe to repeat: reads, heartbeats, drain, offline.
    Safe,
    /// Only if no replica can have acted on it.
    Unsafe,
}

/// One call, independent of the replica it goes to.
#[derive(Debug)]
struct Call<'a> {
    method: Method,
    path: &'a [&'a str],
    params: Params,
    body: Option<Vec<u8>>,
    repeat: Repeat,
    /// Send the client's token (false for the public endpoints).
    auth: bool,
    /// Apply the request timeout (false for the event stream, whose body
    /// never ends; it has an idle timeout instead).
    timeout: bool,
}

impl<'a> Call<'a> {
    fn new(method: Method, path: &'a [&'a str]) -> Self {
        let repeat = if method == Method::GET {
            Repeat::Safe
        } else {
            Repeat::Unsafe
        };
        Call {
            method,
            path,
            params: Params::new(),
            body: None,
            repeat,
            auth: true,
            timeout: true,
        }
    }

    fn get(path: &'a [&'a str]) -> Self {
        Call::new(Method::GET, path)
    }

    fn post(path: &'a [&'a str]) -> Self {
        Call::new(Method::POST, path)
    }

    fn delete(path: &'a [&'a str]) -> Self {
        Call::new(Method::DELETE, path)
    }

    fn params(mut self, params: Params) -> Self {
        self.params = params;
        self
    }

    fn json(mut self, body: &impl Serialize) -> Self {
        // Serialising our own request types cannot fail: they are plain
        // structs with string keys.
        self.body = Some(serde_json::to_vec(body).expect("request bodies serialise"));
        self
    }

    fn safe_to_repeat(mut self) -> Self {
        self.repeat = Repeat::Safe;
        self
    }

    fn public(mut self) -> Self {
        self.auth = false;
        self
    }
}

/// A successful (2xx) answer.
#[derive(Debug)]
struct Answer {
    response: reqwest::Response,
    url: String,
}

impl Answer {
    async fn json<T: DeserializeOwned>(self) -> Result<T, Error> {
        let status = self.response.status();
        let bytes = self
            .response
            .bytes()
            .await
            .map_err(|source| Error::Transport {
                url: self.url.clone(),
                source,
            })?;
        serde_json::from_slice(&bytes).map_err(|source| Error::Decode {
            url: self.url,
            status,
            source,
        })
    }

    async fn text(self) -> Result<String, Error> {
        let url = self.url;
        self.response
            .text()
            .await
            .map_err(|source| Error::Transport { url, source })
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

/// Reads an error answer into an [`ApiError`].
async fn api_error(response: reqwest::Response) -> Error {
    let status = response.status();
    let retry_after = retry_after(response.headers());
    // A body that cannot be read still leaves the status to report.
    let body = response.bytes().await.unwrap_or_default();
    Error::Api(ApiError::from_response(status, &body, retry_after))
}

impl Client {
    /// A client for one server, without a token.
    pub fn new(url: impl Into<String>) -> Result<Client, Error> {
        Client::builder().server(url).build()
    }

    /// A builder for a client with several replicas, a token or timeouts.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// A clone that sends `token` instead (sharing connections and failover
    /// state). For a worker: `client.with_token(registration.token)`.
    pub fn with_token(&self, token: impl Into<TokenSecret>) -> Client {
        Client {
            shared: Arc::clone(&self.shared),
            token: Some(token.into()),
        }
    }

    /// The token this client sends, if any.
    pub fn token(&self) -> Option<&TokenSecret> {
        self.token.as_ref()
    }

    /// The server base URLs, in failover order.
    pub fn servers(&self) -> &[Url] {
        &self.shared.servers
    }

    /// The time limit of one request to one replica.
    pub fn timeout(&self) -> Duration {
        self.shared.timeout
    }

    /// The full URL of `path` (already split into segments) on replica
    /// `index`.
    fn url(&self, index: usize, path: &[&str], params: &Params) -> Result<Url, Error> {
        if let Some(bad) = path.iter().find(|s| matches!(**s, "" | "." | "..")) {
            return Err(Error::InvalidArgument(format!(
                "{bad:?} cannot be used as a path segment"
            )));
        }
        let mut url = self.shared.servers[index].clone();
        url.path_segments_mut()
            .map_err(|()| Error::InvalidArgument("not a base URL".into()))?
            .pop_if_empty()
            .extend(path);
        if !params.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())));
        }
        Ok(url)
    }

    /// Sends `call`, failing over between replicas as described in the
    /// module docs, and returns the first 2xx answer.
    async fn send(&self, call: Call<'_>) -> Result<Answer, Error> {
        let n = self.shared.servers.len();
        let start = self.shared.current.load(Ordering::Relaxed) % n;
        let mut last_error = None;
        for k in 0..n {
            let index = (start + k) % n;
            let is_last = k + 1 == n;
            let url = self.url(index, call.path, &call.params)?;
            let shown = url.to_string();
            let mut request = self.shared.http.request(call.method.clone(), url);
            if call.timeout {
                request = request.timeout(self.shared.timeout);
            }
            if call.auth {
                if let Some(token) = &self.token {
                    request = request.bearer_auth(token.expose());
                }
            }
            if let Some(body) = &call.body {
                request = request
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            let (error, fail_over) = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    self.shared.current.store(index, Ordering::Relaxed);
                    return Ok(Answer {
                        response,
                        url: shown,
                    });
                }
                Ok(response) => {
                    let status = response.status();
                    let fail_over = status == StatusCode::SERVICE_UNAVAILABLE
                        || (call.repeat == Repeat::Safe
                            && matches!(
                                status,
                                StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT
                            ));
                    if !fail_over {
                        // This replica answered the call; keep using it.
                        self.shared.current.store(index, Ordering::Relaxed);
                    }
                    (api_error(response).await, fail_over)
                }
                Err(source) => {
                    let fail_over = source.is_connect() || call.repeat == Repeat::Safe;
                    (
                        Error::Transport {
                            url: shown.clone(),
                            source,
                        },
                        fail_over,
                    )
                }
            };
            if !fail_over || is_last {
                return Err(error);
            }
            tracing::debug!(server = %shown, error = %error, "rollcall server failed; trying the next one");
            // The next replica becomes the starting point for later calls.
            self.shared
                .current
                .store((index + 1) % n, Ordering::Relaxed);
            last_error = Some(error);
        }
        Err(last_error.unwrap_or(Error::NoServers))
    }

    async fn json<T: DeserializeOwned>(&self, call: Call<'_>) -> Result<T, Error> {
        self.send(call).await?.json().await
    }

    /// Fetches page after page until the server says there is no more.
    async fn collect_pages<T, F, Fut>(
        &self,
        first: Option<String>,
        mut fetch: F,
    ) -> Result<Vec<T>, Error>
    where
        F: FnMut(Option<String>) -> Fut,
        Fut: std::future::Future<Output = Result<Page<T>, Error>>,
    {
        let mut all = Vec::new();
        let mut cursor = first;
        loop {
            let page = fetch(cursor.clone()).await?;
            all.extend(page.items);
            match page.next_cursor {
                // A cursor that does not move would loop forever.
                Some(next) if Some(&next) != cursor.as_ref() => cursor = Some(next),
                _ => return Ok(all),
            }
        }
    }

    // ------------------------------------------------------------------
    // Tokens (admin)

    /// `POST /v1/tokens`: creates an enroll or read token. The answer is the
    /// only time its secret is shown.
    pub async fn create_token(&self, new: &NewToken) -> Result<CreatedToken, Error> {
        self.json(Call::post(&["v1", "tokens"]).json(new)).await
    }

    /// `GET /v1/tokens`: one page of tokens (never their secrets).
    pub async fn list_tokens(&self, query: &PageQuery) -> Result<Page<Token>, Error> {
        self.json(Call::get(&["v1", "tokens"]).params(query.params()))
            .await
    }

    /// All tokens, page by page.
    pub async fn list_all_tokens(&self) -> Result<Vec<Token>, Error> {
        self.collect_pages(None, |cursor| {
            let q = PageQuery {
                limit: Some(MAX_LIMIT),
                cursor,
            };
            async move { self.list_tokens(&q).await }
        })
        .await
    }

    /// `DELETE /v1/tokens/{id}`: the token stops working at once.
    pub async fn delete_token(&self, id: &TokenId) -> Result<(), Error> {
        self.send(Call::delete(&["v1", "tokens", id.as_str()]))
            .await
            .map(drop)
    }

    // ------------------------------------------------------------------
    // Workers

    /// `POST /v1/workers` (enroll or admin token): registers a worker, or
    /// registers the same name on the same machine again (new session, new
    /// token; a still-live old session ends as `replaced`).
    pub async fn register(&self, request: &RegisterRequest) -> Result<Registration, Error> {
        let answer = self
            .send(Call::post(&["v1", "workers"]).json(request))
            .await?;
        let created = answer.response.status() == StatusCode::CREATED;
        let mut registration: Registration = answer.json().await?;
        registration.created = created;
        Ok(registration)
    }

    /// `POST /v1/workers/{id}/heartbeat`. Only the worker's own token may
    /// send it: call it on `client.with_token(worker_token)`.
    pub async fn heartbeat(&self, id: &WorkerId) -> Result<HeartbeatAck, Error> {
        let path = ["v1", "workers", id.as_str(), "heartbeat"];
        self.json(
            Call::post(&path)
                .json(&serde_json::json!({}))
                .safe_to_repeat(),
        )
        .await
    }

    /// `POST /v1/heartbeats` (enroll or admin token): heartbeats for many
    /// workers at once, each with its own token. Results come in request
    /// order; one bad entry does not fail the others. At most 1000 entries
    /// (the server answers 400 to more).
    pub async fn batch_heartbeats(
        &self,
        heartbeats: &[BatchHeartbeat],
    ) -> Result<Vec<BatchHeartbeatResult>, Error> {
        let body = BatchRequest { heartbeats };
        let answer: BatchResponse = self
            .json(
                Call::post(&["v1", "heartbeats"])
                    .json(&body)
                    .safe_to_repeat(),
            )
            .await?;
        Ok(answer.results)
    }

    /// `POST /v1/workers/{id}/drain` (the worker's own token or admin): the
    /// worker keeps heartbeating but takes no new work. 409 if it is
    /// offline.
    pub async fn drain(&self, id: &WorkerId) -> Result<Worker, Error> {
        let path = ["v1", "workers", id.as_str(), "drain"];
        self.json(Call::post(&path).safe_to_repeat()).await
    }

    /// `POST /v1/workers/{id}/offline` (the worker's own token or admin):
    /// marks the worker offline at once. The contract accepts the reasons
    /// `Shutdown` and `Exited` (others are 400). Idempotent.
    pub async fn offline(&self, id: &WorkerId, reason: OfflineReason) -> Result<Worker, Error> {
        self.send_offline(id, OfflineRequest::new(reason, None))
            .await
    }

    /// `POST /v1/workers/{id}/offline` with reason `exited` and how the
    /// worker's process ended: what a supervisor (such as `rollcall agent`)
    /// reports when its child ends. Exit code 0 records a graceful offline;
    /// any other code or a signal records a crash. Idempotent: once the
    /// worker is offline a repeat changes nothing, its status included.
    pub async fn exited(&self, id: &WorkerId, status: ExitStatus) -> Result<Worker, Error> {
        self.send_offline(id, OfflineRequest::new(OfflineReason::Exited, Some(status)))
            .await
    }

    async fn send_offline(&self, id: &WorkerId, body: OfflineRequest) -> Result<Worker, Error> {
        let path = ["v1", "workers", id.as_str(), "offline"];
        self.json(Call::post(&path).json(&body).safe_to_repeat())
            .await
    }

    /// `DELETE /v1/workers/{id}` (admin): revokes the worker's token and
    /// forgets it.
    pub async fn delete_worker(&self, id: &WorkerId) -> Result<(), Error> {
        self.send(Call::delete(&["v1", "workers", id.as_str()]))
            .await
            .map(drop)
    }

    /// `GET /v1/workers/{id}`.
    pub async fn get_worker(&self, id: &WorkerId) -> Result<Worker, Error> {
        self.json(Call::get(&["v1", "workers", id.as_str()])).await
    }

    /// `GET /v1/workers`: one page of workers.
    pub async fn list_workers(&self, query: &WorkerQuery) -> Result<Page<Worker>, Error> {
        self.json(Call::get(&["v1", "workers"]).params(query.params()))
            .await
    }

    /// Every worker matching `query`'s filters, starting at its cursor, in
    /// pages of `query.limit` (default 1000).
    pub async fn list_all_workers(&self, query: &WorkerQuery) -> Result<Vec<Worker>, Error> {
        let limit = query.limit.or(Some(MAX_LIMIT));
        self.collect_pages(query.cursor.clone(), |cursor| {
            let q = WorkerQuery {
                limit,
                cursor,
                ..query.clone()
            };
            async move { self.list_workers(&q).await }
        })
        .await
    }

    // ------------------------------------------------------------------
    // Machines

    /// `GET /v1/machines`: one page of machines.
    pub async fn list_machines(&self, query: &MachineQuery) -> Result<Page<Machine>, Error> {
        self.json(Call::get(&["v1", "machines"]).params(query.params()))
            .await
    }

    /// Every machine matching `query`'s filter, page by page.
    pub async fn list_all_machines(&self, query: &MachineQuery) -> Result<Vec<Machine>, Error> {
        let limit = query.limit.or(Some(MAX_LIMIT));
        self.collect_pages(query.cursor.clone(), |cursor| {
            let q = MachineQuery {
                limit,
                cursor,
                ..query.clone()
            };
            async move { self.list_machines(&q).await }
        })
        .await
    }

    /// `GET /v1/machines/{id}`: the machine and its workers.
    ///
    /// The ids `.` and `..` are valid machine ids but no URL can carry them
    /// as a path segment; they give [`Error::InvalidArgument`].
    pub async fn get_machine(&self, id: &MachineId) -> Result<MachineWithWorkers, Error> {
        self.json(Call::get(&["v1", "machines", id.as_str()])).await
    }

    // ------------------------------------------------------------------
    // Health

    /// `GET /v1/health`: availability, crashes and downtime of the fleet
    /// over a window, with the machines and workers that crashed most and
    /// were down longest.
    pub async fn fleet_health(&self, query: &HealthQuery) -> Result<FleetHealth, Error> {
        self.json(Call::get(&["v1", "health"]).params(query.params()))
            .await
    }

    /// `GET /v1/machines/{id}/health`: a machine's figures over a window,
    /// its buckets, and its workers'.
    pub async fn machine_health(
        &self,
        id: &MachineId,
        query: &HealthQuery,
    ) -> Result<MachineHealth, Error> {
        self.json(Call::get(&["v1", "machines", id.as_str(), "health"]).params(query.params()))
            .await
    }

    /// `GET /v1/workers/{id}/health`: a worker's figures over a window and
    /// its buckets (also for a deleted worker, within the history's
    /// retention).
    pub async fn worker_health(
        &self,
        id: &WorkerId,
        query: &HealthQuery,
    ) -> Result<WorkerHealth, Error> {
        self.json(Call::get(&["v1", "workers", id.as_str(), "health"]).params(query.params()))
            .await
    }

    // ------------------------------------------------------------------
    // Incidents

    /// `GET /v1/incidents`: one page of incidents, newest first.
    pub async fn list_incidents(
        &self,
        query: &crate::IncidentQuery,
    ) -> Result<Page<crate::Incident>, Error> {
        self.json(Call::get(&["v1", "incidents"]).params(query.params()))
            .await
    }

    /// `GET /v1/incidents/{id}`.
    pub async fn get_incident(&self, id: &str) -> Result<crate::Incident, Error> {
        self.json(Call::get(&["v1", "incidents", id])).await
    }

    /// `POST /v1/incidents/{id}/ack` (admin): someone is on it. The first
    /// acknowledgement stands; repeating it changes nothing.
    pub async fn ack_incident(&self, id: &str, by: &str) -> Result<crate::Incident, Error> {
        let path = ["v1", "incidents", id, "ack"];
        let body = crate::incidents::AckRequest { by };
        self.json(Call::post(&path).json(&body).safe_to_repeat())
            .await
    }

    /// `GET /v1/alert-rules`: the config file's rules, then those made
    /// through the API.
    pub async fn list_alert_rules(&self) -> Result<Vec<crate::AlertRule>, Error> {
        let rules: crate::incidents::AlertRules =
            self.json(Call::get(&["v1", "alert-rules"])).await?;
        Ok(rules.items)
    }

    /// `PUT /v1/alert-rules/{name}` (admin): creates or replaces a rule.
    pub async fn put_alert_rule(
        &self,
        name: &str,
        spec: &crate::AlertRuleSpec,
    ) -> Result<crate::AlertRule, Error> {
        self.json(
            Call::new(Method::PUT, &["v1", "alert-rules", name])
                .json(spec)
                .safe_to_repeat(),
        )
        .await
    }

    /// `DELETE /v1/alert-rules/{name}` (admin); the incidents it had open
    /// resolve.
    pub async fn delete_alert_rule(&self, name: &str) -> Result<(), Error> {
        self.send(Call::delete(&["v1", "alert-rules", name]))
            .await
            .map(drop)
    }

    // ------------------------------------------------------------------
    // Events

    /// `GET /v1/events`: one page of events, oldest first. For the next
    /// page, set `after` to [`Page::next_after`].
    pub async fn list_events(&self, query: &EventQuery) -> Result<Page<Event>, Error> {
        self.json(Call::get(&["v1", "events"]).params(query.params()))
            .await
    }

    /// Every event matching `query` after `query.after`, page by page. The
    /// log can be long; prefer [`Client::list_events`] or
    /// [`Client::event_stream`] unless the range is known to be small.
    pub async fn list_all_events(&self, query: &EventQuery) -> Result<Vec<Event>, Error> {
        let mut all = Vec::new();
        let mut q = query.clone();
        q.limit = q.limit.or(Some(MAX_LIMIT));
        loop {
            let page = self.list_events(&q).await?;
            let next = page.next_after();
            all.extend(page.items);
            match next {
                Some(after) if Some(after) != q.after => q.after = Some(after),
                _ => return Ok(all),
            }
        }
    }

    /// `GET /v1/events/stream`: the live event stream. With `after`, the
    /// server first replays every event after that seq, then goes live;
    /// without it the stream starts now.
    pub async fn event_stream(&self, after: Option<u64>) -> Result<EventStream, Error> {
        let mut call = Call::get(&["v1", "events", "stream"]);
        call.timeout = false;
        if let Some(seq) = after {
            call.params.push(("after", seq.to_string()));
        }
        let answer = self.send(call).await?;
        Ok(EventStream::new(
            answer.response,
            answer.url,
            self.shared.stream_idle_timeout,
            after,
        ))
    }

    // ------------------------------------------------------------------
    // Cleanup (admin)

    /// `POST /v1/cleanup/stale`: marks workers past their deadline offline
    /// now.
    pub async fn cleanup_stale(&self) -> Result<StaleCleanup, Error> {
        self.json(Call::post(&["v1", "cleanup", "stale"])).await
    }

    /// `POST /v1/cleanup/all`: the stale sweep plus forgetting long-offline
    /// workers and empty machines, pruning old events and expired tokens.
    pub async fn cleanup_all(&self) -> Result<FullCleanup, Error> {
        self.json(Call::post(&["v1", "cleanup", "all"])).await
    }

    // ------------------------------------------------------------------
    // Operations (no token needed)

    /// `GET /healthz`: `Ok(())` while a server process runs.
    pub async fn healthz(&self) -> Result<(), Error> {
        self.send(Call::get(&["healthz"]).public()).await.map(drop)
    }

    /// `GET /readyz`: `Ok(true)` when a replica's store answers, `Ok(false)`
    /// when every replica that answered said 503, an error when none
    /// answered. (For one replica's own readiness, use a client with only
    /// that URL.)
    pub async fn readyz(&self) -> Result<bool, Error> {
        match self.send(Call::get(&["readyz"]).public()).await {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(StatusCode::SERVICE_UNAVAILABLE) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `GET /metrics`: the Prometheus text exposition. Sends the client's
    /// token, which the server requires only if `metrics_token` is set.
    pub async fn metrics(&self) -> Result<String, Error> {
        self.send(Call::get(&["metrics"])).await?.text().await
    }

    /// `GET /openapi.json`: the contract as an OpenAPI 3 document.
    pub async fn openapi(&self) -> Result<serde_json::Value, Error> {
        self.json(Call::get(&["openapi.json"]).public()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(urls: &[&str]) -> Client {
        Client::builder()
            .servers(urls.iter().copied())
            .token("rc_admin_x")
            .build()
            .unwrap()
    }

    #[test]
    fn base_urls_are_checked() {
        assert!(matches!(Client::builder().build(), Err(Error::NoServers)));
        for bad in ["not a url", "ftp://h/", "mailto:x@y", "http://user:pw@h/"] {
            assert!(
                matches!(Client::new(bad), Err(Error::InvalidUrl { .. })),
                "{bad}"
            );
        }
        let c = client(&["http://h:7373/?q=1#f", "https://lb.example/rollcall/"]);
        assert_eq!(c.servers()[0].as_str(), "http://h:7373/");
        assert_eq!(c.servers()[1].as_str(), "https://lb.example/rollcall/");
    }

    #[test]
    fn urls_join_paths_and_encode_segments_and_queries() {
        let c = client(&["http://h:7373", "http://lb/rollcall/", "http://lb/prefix"]);
        let params = vec![("cursor", "a b&c=d/é".to_owned()), ("limit", "5".into())];
        assert_eq!(
            c.url(0, &["v1", "workers"], &params).unwrap().as_str(),
            "http://h:7373/v1/workers?cursor=a+b%26c%3Dd%2F%C3%A9&limit=5"
        );
        assert_eq!(
            c.url(1, &["v1", "machines", "host:a"], &Params::new())
                .unwrap()
                .as_str(),
            "http://lb/rollcall/v1/machines/host:a"
        );
        assert_eq!(
            c.url(2, &["healthz"], &Params::new()).unwrap().as_str(),
            "http://lb/prefix/healthz"
        );
        for bad in [".", "..", ""] {
            assert!(matches!(
                c.url(0, &["v1", "machines", bad], &Params::new()),
                Err(Error::InvalidArgument(_))
            ));
        }
    }

    #[test]
    fn debug_output_hides_the_token() {
        let c = client(&["http://h:7373"]).with_token("rc_worker_supersecret");
        let shown = format!("{c:?}");
        assert!(!shown.contains("supersecret"), "{shown}");
        assert!(shown.contains("http://h:7373/"));
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }
}

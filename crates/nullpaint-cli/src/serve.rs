//! `nullpaint serve`: one model loaded behind an HTTP server (axum), for apps that call an
//! inpainting engine (as IOPaint's API or A1111's `--api` serve theirs) and for the page when
//! the browser has no WebGPU.
//!
//! - `POST /inpaint`, multipart: `image` and `mask` (files), `prompt`, and any option of
//!   `nullpaint inpaint` by its flag name (`steps`, `seed`, `negative-prompt`, ...). Answers the
//!   PNG (`X-Nullpaint-Seed`, `X-Nullpaint-Seconds` headers); with `Accept: text/event-stream`,
//!   server-sent events instead: `queued`, `started`, `progress` per step, then `done` (the PNG
//!   in base64) or `error`.
//! - `GET /health`: JSON (model, device, queue); 503 while shutting down or after a lost device.
//! - One job runs at a time on the engine's thread (the model is not shared between threads);
//!   `--queue N` more wait, beyond that 429 with `Retry-After`. A client that goes away cancels
//!   its job, queued or running.
//! - Limits: request size (413), photo pixels (413), steps (400).
//! - Binds 127.0.0.1 by default; any other address needs a token (`--token` or
//!   `NULLPAINT_TOKEN`; `Authorization: Bearer TOKEN`). Without a token only loopback `Host`
//!   names are served (no DNS rebinding), and a browser request from another origin is refused
//!   unless that origin is given with `--cors-origin`.
//! - Ctrl-C / SIGTERM: stop accepting, answer queued jobs 503, let the running job finish for
//!   up to `--shutdown-grace` seconds, then abandon it (its client gets 503); a second signal
//!   abandons it at once.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::body::Body;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{DefaultBodyLimit, Multipart, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use nullpaint::pipeline::{MaskImage, Progress, RgbImage};
use tokio::sync::{Notify, mpsc};

use crate::engine::{Engine, RunError};
use crate::io;
use crate::options::{JobArgs, JobSettings, ModelArgs, StepCounter, job_mask, stage_name};
use crate::signals::StopSignals;

pub const HELP: &str = "Examples:
  nullpaint serve --model sd15
  curl -sf -F image=@photo.png -F mask=@mask.png -F prompt='a red bench' -F steps=30 \\
       http://127.0.0.1:7861/inpaint -o result.png
  curl -N -H 'Accept: text/event-stream' -F image=@photo.png -F mask=@mask.png \\
       http://127.0.0.1:7861/inpaint          # progress events, then the PNG in base64
  NULLPAINT_TOKEN=secret nullpaint serve --host 0.0.0.0   # then: -H 'Authorization: Bearer secret'

The flags after --model give the defaults of every request; a request's fields override them.";

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on. Anything but a loopback address needs a token.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port, printed).
    #[arg(long, default_value_t = 7861)]
    port: u16,
    /// Require `Authorization: Bearer TOKEN` on every request but GET /health. Default: the
    /// NULLPAINT_TOKEN environment variable (better than a flag, which other users can see).
    #[arg(long)]
    token: Option<String>,
    /// Requests that may wait behind the running one; more get 429 Too Many Requests.
    #[arg(long, default_value_t = 4, value_name = "N")]
    queue: usize,
    /// Largest request body, in MiB (413 above).
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    max_upload_mb: usize,
    /// Largest photo, in pixels (413 above); the default takes 48-megapixel phone photos.
    #[arg(long, default_value_t = 50_000_000, value_name = "PIXELS")]
    max_pixels: u64,
    /// Most steps a request may ask for (400 above).
    #[arg(long, default_value_t = 200, value_name = "N")]
    max_steps: usize,
    /// A web page origin allowed to call the server from the browser (CORS), e.g.
    /// http://localhost:8080; repeat for several. Other origins are refused.
    #[arg(long, value_name = "ORIGIN")]
    cors_origin: Vec<String>,
    /// On Ctrl-C / SIGTERM, how long the running job may take to finish before it is abandoned.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    shutdown_grace: u64,
    /// The prompt of requests that give none.
    #[arg(long, default_value = "")]
    prompt: String,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    job: JobArgs,
}

/// One accepted request, for the engine's thread.
struct Work {
    id: u64,
    image: RgbImage,
    mask: MaskImage,
    settings: JobSettings,
    seed: u64,
    cancel: Arc<AtomicBool>,
    events: mpsc::UnboundedSender<JobEvent>,
}

/// What the engine's thread tells a request.
enum JobEvent {
    Started,
    Progress(StepCounter),
    Done(Result<Finished, Failure>),
}

struct Finished {
    png: Vec<u8>,
    seed: u64,
    seconds: f64,
    width: usize,
    height: usize,
}

#[derive(Debug, Clone)]
struct Failure {
    status: StatusCode,
    message: String,
}

impl Failure {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut response =
            json_response(self.status, &serde_json::json!({ "error": self.message }));
        if self.status == StatusCode::TOO_MANY_REQUESTS
            || self.status == StatusCode::SERVICE_UNAVAILABLE
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The queue and the running job, under one lock.
#[derive(Default)]
struct Queue {
    waiting: VecDeque<Work>,
    /// The running job: its id and cancel flag.
    running: Option<(u64, Arc<AtomicBool>)>,
    /// No more work: the engine's thread ends.
    closed: bool,
}

/// What the handlers and the engine's thread share.
struct App {
    queue: Mutex<Queue>,
    wake: Condvar,
    capacity: usize,
    next_id: AtomicU64,
    served: AtomicU64,
    failed: AtomicU64,
    shutting_down: AtomicBool,
    /// Set after a lost device: the server answers 503 and shuts down.
    fault: Mutex<Option<String>>,
    shutdown: Notify,
    token: Option<String>,
    cors: Vec<String>,
    /// Bytes.
    max_upload: usize,
    max_pixels: u64,
    max_steps: usize,
    defaults: JobSettings,
    model: String,
    device: String,
    precision: String,
}

impl App {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock cannot leave the queue half-updated (plain moves).
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fault(&self) -> Option<String> {
        self.fault.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Refuses work when shutting down or broken.
    fn unavailable(&self) -> Option<Failure> {
        if let Some(fault) = self.fault() {
            return Some(Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the server's GPU failed ({fault}); it is shutting down to be restarted"),
            ));
        }
        if self.shutting_down.load(Ordering::SeqCst) {
            return Some(Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            ));
        }
        None
    }

    /// Asks for a graceful shutdown: stop accepting, answer the waiting requests 503.
    fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let waiting: Vec<Work> = self.lock().waiting.drain(..).collect();
        for work in waiting {
            let _ = work.events.send(JobEvent::Done(Err(Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down; the job was not run",
            ))));
        }
        self.shutdown.notify_one();
    }

    /// Abandons the running job (shutdown grace over, or a second signal).
    fn abandon_running(&self) {
        if let Some((_, cancel)) = &self.lock().running {
            cancel.store(true, Ordering::SeqCst);
        }
    }
}

/// Held by a request while its job is queued or running; dropped (the client went away, or the
/// answer was sent), it cancels the job and frees its place in the queue.
struct CancelOnDrop {
    app: Arc<App>,
    id: u64,
    cancel: Arc<AtomicBool>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
        let mut queue = self.app.lock();
        let before = queue.waiting.len();
        queue.waiting.retain(|w| w.id != self.id);
        if queue.waiting.len() != before {
            tracing::info!("job {}: client left while queued", self.id);
        }
    }
}

/// Whether an address is the loopback interface (`127.0.0.0/8`, `::1`, `localhost`).
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// The host part of a `Host` header (`127.0.0.1:7861`, `[::1]:80`, `localhost`).
fn host_name(host_header: &str) -> &str {
    if let Some(rest) = host_header.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host_header.split(':').next().unwrap_or(host_header)
}

/// Compares without stopping at the first difference (the time does not tell the token).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= (x ^ y) as usize;
    }
    diff == 0
}

/// Origin, host and token checks, and CORS headers, before every route.
async fn guard(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_string);
    let allowed_origin = origin
        .as_ref()
        .filter(|o| app.cors.iter().any(|c| c == *o || c == "*"))
        .cloned();
    if let Some(origin) = &origin
        && allowed_origin.is_none()
    {
        return Failure::new(
            StatusCode::FORBIDDEN,
            format!(
                "requests from the web page {origin} are not allowed: start the server with --cors-origin {origin}"
            ),
        )
        .into_response();
    }
    let mut response = if request.method() == Method::OPTIONS && allowed_origin.is_some() {
        // A CORS preflight: answered without credentials, as browsers send it.
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, accept"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        r
    } else if let Some(refusal) = check_access(&app, &request) {
        refusal.into_response()
    } else if request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|l| l.to_str().ok())
        .and_then(|l| l.parse::<u64>().ok())
        .is_some_and(|l| l > app.max_upload as u64)
    {
        // Refused before the body is read (a body without a length is cut at the same limit
        // by DefaultBodyLimit while it is read).
        Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request is larger than the server's limit of {} MiB (--max-upload-mb)",
                app.max_upload >> 20
            ),
        )
        .into_response()
    } else {
        next.run(request).await
    };
    if let Some(origin) = allowed_origin
        && let Ok(value) = HeaderValue::from_str(&origin)
    {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("x-nullpaint-seed, x-nullpaint-seconds"),
        );
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

/// The host and token rules of the module header; `None` when the request may go on.
fn check_access(app: &App, request: &Request) -> Option<Failure> {
    match &app.token {
        None => {
            let host = request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            if !is_loopback_host(host_name(host)) {
                return Some(Failure::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "Host {host:?} is not this machine's loopback name; without a token the server answers only requests to 127.0.0.1 / localhost"
                    ),
                ));
            }
            None
        }
        Some(token) => {
            if request.uri().path() == "/health" {
                return None;
            }
            let given = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.strip_prefix("Bearer "))
                .unwrap_or("");
            if same_secret(given.trim().as_bytes(), token.as_bytes()) {
                None
            } else {
                Some(Failure::new(
                    StatusCode::UNAUTHORIZED,
                    "this server needs `Authorization: Bearer TOKEN` (the token it was started with)",
                ))
            }
        }
    }
}

async fn health(State(app): State<Arc<App>>) -> Response {
    let (waiting, busy) = {
        let q = app.lock();
        (q.waiting.len(), q.running.is_some())
    };
    let (status, state) = if let Some(fault) = app.fault() {
        (StatusCode::SERVICE_UNAVAILABLE, format!("failed: {fault}"))
    } else if app.shutting_down.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting-down".into())
    } else {
        (StatusCode::OK, "ok".into())
    };
    json_response(
        status,
        &serde_json::json!({
            "status": state,
            "model": app.model,
            "device": app.device,
            "precision": app.precision,
            "busy": busy,
            "queued": waiting,
            "queue_capacity": app.capacity,
            "served": app.served.load(Ordering::SeqCst),
            "failed": app.failed.load(Ordering::SeqCst),
            "options": JobSettings::NAMES,
        }),
    )
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        value.to_string(),
    )
        .into_response()
}

async fn index() -> &'static str {
    "nullpaint inpainting server\n\
     POST /inpaint  multipart: image, mask (files), prompt, and any option of `nullpaint inpaint` by its flag name (steps, seed, ...)\n\
     \x20              -> image/png; with `Accept: text/event-stream`: progress events, then the PNG in base64\n\
     GET  /health   -> JSON status\n"
}

/// The fields of a request: the files' bytes and the settings.
struct Form {
    image: Vec<u8>,
    mask: Option<Vec<u8>>,
    settings: JobSettings,
}

fn multipart_failure(e: axum::extract::multipart::MultipartError) -> Failure {
    let status = e.status();
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "the request is larger than the server's limit (--max-upload-mb)".to_string()
    } else {
        format!("malformed multipart body: {}", e.body_text())
    };
    Failure::new(status, message)
}

async fn read_form(app: &App, mut multipart: Multipart) -> Result<Form, Failure> {
    let mut image = None;
    let mut mask = None;
    let mut settings = app.defaults.clone();
    let mut seen: Vec<String> = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(multipart_failure)? {
        let name = field.name().unwrap_or("").to_string();
        if seen.contains(&name) {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                format!("the field {name:?} is given twice"),
            ));
        }
        seen.push(name.clone());
        match name.as_str() {
            "image" => image = Some(field.bytes().await.map_err(multipart_failure)?.to_vec()),
            "mask" => mask = Some(field.bytes().await.map_err(multipart_failure)?.to_vec()),
            other if JobSettings::is_option(other) => {
                let text = field.text().await.map_err(multipart_failure)?;
                settings
                    .set(other, &text)
                    .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, e))?;
            }
            other => {
                return Err(Failure::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "unknown field {other:?}: the fields are image, mask, {}",
                        JobSettings::NAMES.join(", ")
                    ),
                ));
            }
        }
    }
    let Some(image) = image.filter(|b| !b.is_empty()) else {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "no \"image\" field: send the photo as a file field named image",
        ));
    };
    settings
        .check()
        .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    if settings.steps > app.max_steps {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            format!(
                "steps: {} is more than this server allows ({}, --max-steps)",
                settings.steps, app.max_steps
            ),
        ));
    }
    Ok(Form {
        image,
        mask: mask.filter(|m| !m.is_empty()),
        settings,
    })
}

/// Decodes a picture after checking its size against the server's pixel limit.
fn decode_checked(
    bytes: &[u8],
    what: &str,
    max_pixels: u64,
) -> Result<image::DynamicImage, Failure> {
    let dims = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .ok()
        .and_then(|r| r.into_dimensions().ok());
    if let Some((w, h)) = dims
        && w as u64 * h as u64 > max_pixels
    {
        return Err(Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the {what} is {w}x{h} ({} pixels), more than this server takes ({max_pixels}, --max-pixels)",
                w as u64 * h as u64
            ),
        ));
    }
    nullpaint::decode::decode_upright(bytes).map_err(|e| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            format!("cannot read the {what}: {e}"),
        )
    })
}

fn wants_events(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"))
}

async fn inpaint(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    match accept(&app, multipart).await {
        Err(failure) => {
            if failure.status.is_client_error() {
                tracing::info!("refused: {} {}", failure.status, failure.message);
            }
            failure.into_response()
        }
        Ok((guard, events, position)) => {
            if wants_events(&headers) {
                event_stream(guard, events, position)
            } else {
                wait_for_picture(guard, events).await
            }
        }
    }
}

/// Reads and checks a request and queues its job.
async fn accept(
    app: &Arc<App>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<(CancelOnDrop, mpsc::UnboundedReceiver<JobEvent>, usize), Failure> {
    if let Some(refusal) = app.unavailable() {
        return Err(refusal);
    }
    let multipart = multipart.map_err(|e| {
        Failure::new(
            e.status(),
            format!(
                "{} (send multipart/form-data with an image file field)",
                e.body_text()
            ),
        )
    })?;
    let form = read_form(app, multipart).await?;
    let max_pixels = app.max_pixels;
    let extend = form.settings.extend;
    let Form {
        image,
        mask,
        settings,
    } = form;
    let decoded = tokio::task::spawn_blocking(move || -> Result<_, Failure> {
        let image = nullpaint::decode::to_rgb_image(&decode_checked(&image, "image", max_pixels)?);
        let mask = mask
            .map(|m| {
                decode_checked(&m, "mask", max_pixels).map(|m| nullpaint::decode::to_mask_image(&m))
            })
            .transpose()?;
        let mask = job_mask(&image, mask, extend, ("image", "mask"))
            .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, format!("{e:#}")))?;
        Ok((image, mask))
    })
    .await
    .map_err(|e| {
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("decoding failed: {e}"),
        )
    })??;
    let (image, mask) = decoded;

    let (tx, rx) = mpsc::unbounded_channel();
    let id = app.next_id.fetch_add(1, Ordering::SeqCst);
    let cancel = Arc::new(AtomicBool::new(false));
    let seed = settings.seed.unwrap_or_else(io::random_seed);
    let work = Work {
        id,
        image,
        mask,
        settings,
        seed,
        cancel: cancel.clone(),
        events: tx,
    };
    let position = {
        let mut q = app.lock();
        if let Some(refusal) = app.unavailable() {
            return Err(refusal);
        }
        // `capacity` requests may wait behind the running one.
        let in_system = q.waiting.len() + usize::from(q.running.is_some());
        if in_system > app.capacity {
            return Err(Failure::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "the server is busy: one job running and {} waiting (--queue {}); retry later",
                    q.waiting.len(),
                    app.capacity
                ),
            ));
        }
        q.waiting.push_back(work);
        q.waiting.len()
    };
    app.wake.notify_all();
    tracing::info!("job {id}: queued at {position}");
    Ok((
        CancelOnDrop {
            app: app.clone(),
            id,
            cancel,
        },
        rx,
        position,
    ))
}

/// The plain answer: the PNG when the job is done. Dropped with the connection, the guard
/// cancels the job.
async fn wait_for_picture(
    guard: CancelOnDrop,
    mut events: mpsc::UnboundedReceiver<JobEvent>,
) -> Response {
    let outcome = loop {
        match events.recv().await {
            Some(JobEvent::Done(outcome)) => break outcome,
            Some(_) => continue,
            None => {
                break Err(Failure::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the engine stopped without an answer",
                ));
            }
        }
    };
    drop(guard);
    match outcome {
        Ok(done) => {
            let mut response = (
                [(header::CONTENT_TYPE, HeaderValue::from_static("image/png"))],
                Body::from(done.png),
            )
                .into_response();
            let h = response.headers_mut();
            h.insert("x-nullpaint-seed", HeaderValue::from(done.seed));
            if let Ok(v) = HeaderValue::from_str(&format!("{:.3}", done.seconds)) {
                h.insert("x-nullpaint-seconds", v);
            }
            response
        }
        Err(failure) => failure.into_response(),
    }
}

/// The server-sent-events answer. The stream owns the guard: when the client goes away the
/// stream is dropped and the job cancelled.
fn event_stream(
    guard: CancelOnDrop,
    events: mpsc::UnboundedReceiver<JobEvent>,
    position: usize,
) -> Response {
    let first = SseEvent::default()
        .event("queued")
        .data(serde_json::json!({ "position": position }).to_string());
    let state = (Some(first), events, Some(guard));
    let stream = futures_util::stream::unfold(state, |(first, mut events, guard)| async move {
        if let Some(first) = first {
            return Some((Ok::<_, Infallible>(first), (None, events, guard)));
        }
        guard.as_ref()?;
        let event = match events.recv().await {
            Some(JobEvent::Started) => SseEvent::default().event("started").data("{}"),
            Some(JobEvent::Progress(c)) => {
                let (region, regions) = c.region();
                SseEvent::default().event("progress").data(
                    serde_json::json!({
                        "stage": c.stage().map(stage_name),
                        "done": c.done(),
                        "total": c.total(),
                        "region": region,
                        "regions": regions,
                    })
                    .to_string(),
                )
            }
            Some(JobEvent::Done(Ok(done))) => {
                let event = SseEvent::default().event("done").data(
                    serde_json::json!({
                        "seed": done.seed,
                        "seconds": done.seconds,
                        "width": done.width,
                        "height": done.height,
                        "png": base64::engine::general_purpose::STANDARD.encode(&done.png),
                    })
                    .to_string(),
                );
                return Some((Ok(event), (None, events, None)));
            }
            Some(JobEvent::Done(Err(f))) => {
                let event = SseEvent::default().event("error").data(
                    serde_json::json!({ "status": f.status.as_u16(), "error": f.message })
                        .to_string(),
                );
                return Some((Ok(event), (None, events, None)));
            }
            None => return None,
        };
        Some((Ok(event), (None, events, guard)))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// The engine's thread: runs the queued jobs one at a time until the queue is closed.
fn engine_loop(engine: Engine, app: Arc<App>) {
    loop {
        let work = {
            let mut q = app.lock();
            loop {
                if let Some(work) = q.waiting.pop_front() {
                    q.running = Some((work.id, work.cancel.clone()));
                    break Some(work);
                }
                if q.closed {
                    break None;
                }
                q = app.wake.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        let Some(work) = work else { return };
        let outcome = run_work(&engine, &app, &work);
        app.lock().running = None;
        match &outcome {
            Ok(done) => {
                app.served.fetch_add(1, Ordering::SeqCst);
                tracing::info!("job {}: done in {:.1} s", work.id, done.seconds);
            }
            Err(f) => {
                app.failed.fetch_add(1, Ordering::SeqCst);
                tracing::info!("job {}: {} {}", work.id, f.status, f.message);
            }
        }
        let _ = work.events.send(JobEvent::Done(outcome));
    }
}

fn run_work(engine: &Engine, app: &App, work: &Work) -> Result<Finished, Failure> {
    if work.cancel.load(Ordering::SeqCst) {
        return Err(Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "cancelled before it ran",
        ));
    }
    let _ = work.events.send(JobEvent::Started);
    let start = Instant::now();
    let options = work.settings.to_options(work.seed);
    let mut counter = StepCounter::new(work.settings.steps);
    let result = engine.run(&work.image, &work.mask, &options, &mut |p: Progress| {
        counter.update(&p);
        if matches!(p, Progress::Step { .. } | Progress::Stage(_)) {
            let _ = work.events.send(JobEvent::Progress(counter));
        }
        if work.cancel.load(Ordering::SeqCst) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    let picture = match result {
        Ok(picture) => picture,
        Err(RunError::Cancelled) => {
            let why = if app.shutting_down.load(Ordering::SeqCst) {
                "abandoned: the server is shutting down"
            } else {
                "cancelled"
            };
            return Err(Failure::new(StatusCode::SERVICE_UNAVAILABLE, why));
        }
        Err(RunError::Input(message)) => {
            return Err(Failure::new(StatusCode::UNPROCESSABLE_ENTITY, message));
        }
        Err(e) => {
            if e.is_fatal() {
                *app.fault.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                eprintln!("error: {e}\nthe server shuts down (its device cannot be used again)");
                app.begin_shutdown();
            }
            return Err(Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                e.to_string(),
            ));
        }
    };
    let mut png = Vec::new();
    image::RgbImage::from_raw(picture.width as u32, picture.height as u32, picture.data)
        .ok_or_else(|| {
            Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the result has the wrong size",
            )
        })?
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| {
            Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("encoding the PNG: {e}"),
            )
        })?;
    Ok(Finished {
        png,
        seed: work.seed,
        seconds: start.elapsed().as_secs_f64(),
        width: picture.width,
        height: picture.height,
    })
}

/// Waits for Ctrl-C or SIGTERM (or a fatal fault); then drains the queue and lets the running
/// job finish within the grace period; a second signal abandons it at once.
async fn shutdown_signal(app: Arc<App>, grace: Duration) {
    let mut signals = StopSignals::new();
    tokio::select! {
        _ = signals.next() => {
            let busy = app.lock().running.is_some();
            eprintln!(
                "shutting down: {}",
                if busy {
                    format!("finishing the running job (up to {} s; Ctrl-C again to abandon it)", grace.as_secs())
                } else {
                    "no job running".to_string()
                }
            );
        }
        _ = app.shutdown.notified() => {}
    }
    app.begin_shutdown();
    let watcher = app.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(grace) => {
                if watcher.lock().running.is_some() {
                    eprintln!("the shutdown grace period is over: abandoning the running job");
                }
            }
            _ = signals.next() => eprintln!("abandoning the running job"),
        }
        watcher.abandon_running();
    });
}

pub fn serve(args: ServeArgs) -> Result<()> {
    let token = args
        .token
        .clone()
        .or_else(|| std::env::var("NULLPAINT_TOKEN").ok())
        .filter(|t| !t.is_empty());
    if !is_loopback_host(&args.host) && token.is_none() {
        bail!(
            "--host {} lets other machines reach the server: give a token (NULLPAINT_TOKEN=... or --token ...) that clients send as `Authorization: Bearer TOKEN`",
            args.host
        );
    }
    let defaults = JobSettings::new(&args.prompt, &args.job);
    defaults.check().map_err(|e| anyhow::anyhow!("--{e}"))?;
    if args.max_upload_mb == 0 || args.max_pixels == 0 || args.max_steps == 0 {
        bail!("--max-upload-mb, --max-pixels and --max-steps must be at least 1");
    }
    // The port first: a taken port fails before a long model load.
    let address = if args.host.contains(':') && !args.host.starts_with('[') {
        format!("[{}]:{}", args.host, args.port)
    } else {
        format!("{}:{}", args.host, args.port)
    };
    let listener = std::net::TcpListener::bind(&address)
        .with_context(|| format!("cannot listen on {address}"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;

    // The engine lives on its own thread (the model stays on the thread that loaded it).
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let model_args = args.model.clone();
    let (engine_tx, engine_rx) = std::sync::mpsc::channel::<Arc<App>>();
    let engine_thread = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            let engine = match Engine::open(&model_args) {
                Ok(engine) => engine,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok((
                engine.device.clone(),
                engine.precision.to_string(),
                engine.load_seconds,
            )));
            if let Ok(app) = engine_rx.recv() {
                engine_loop(engine, app);
            }
        })?;
    let (device, precision, load_seconds) = ready_rx
        .recv()
        .context("the engine's thread stopped while loading the model")??;
    eprintln!("model loaded in {load_seconds:.1} s");
    let app = Arc::new(App {
        queue: Mutex::new(Queue::default()),
        wake: Condvar::new(),
        capacity: args.queue,
        next_id: AtomicU64::new(1),
        served: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        shutting_down: AtomicBool::new(false),
        fault: Mutex::new(None),
        shutdown: Notify::new(),
        token,
        cors: args.cors_origin.clone(),
        max_upload: args.max_upload_mb.saturating_mul(1 << 20),
        max_pixels: args.max_pixels,
        max_steps: args.max_steps,
        defaults,
        model: args.model.model.clone(),
        device,
        precision,
    });
    engine_tx
        .send(app.clone())
        .map_err(|_| anyhow::anyhow!("the engine's thread stopped"))?;

    let router = Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/inpaint", post(inpaint))
        .layer(DefaultBodyLimit::max(app.max_upload))
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let grace = Duration::from_secs(args.shutdown_grace);
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        eprintln!(
            "listening on http://{local} (POST /inpaint, GET /health; queue {}, {})",
            args.queue,
            if app.token.is_some() {
                "token required"
            } else {
                "loopback only, no token"
            }
        );
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown_signal(app.clone(), grace))
            .await
    });
    // Every connection is closed: no request waits for the engine any more.
    app.lock().closed = true;
    app.wake.notify_all();
    app.abandon_running();
    let _ = engine_thread.join();
    result.context("the server failed")?;
    eprintln!(
        "shut down: {} jobs served, {} failed",
        app.served.load(Ordering::SeqCst),
        app.failed.load(Ordering::SeqCst)
    );
    if let Some(fault) = app.fault() {
        bail!("stopped after a GPU fault: {fault}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names() {
        for h in [
            "127.0.0.1",
            "localhost",
            "LOCALHOST",
            "::1",
            "[::1]",
            "127.1.2.3",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "0.0.0.0",
            "192.168.1.2",
            "example.com",
            "::",
            "localhost.evil.com",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
        assert_eq!(host_name("127.0.0.1:7861"), "127.0.0.1");
        assert_eq!(host_name("[::1]:80"), "::1");
        assert_eq!(host_name("localhost"), "localhost");
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
    }
}

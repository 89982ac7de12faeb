//! `nullpaint serve` on the tiny SD 1.x fixture (CPU backend), driven by real HTTP clients on
//! 127.0.0.1: `ureq`, and raw TCP for what a library will not send (malformed bodies, a client
//! that hangs up mid-run).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::fixtures;

fn e2e(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("reference/e2e").join(name)).unwrap()
}

/// A running server, killed when dropped.
struct Server {
    child: Option<Child>,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(extra: &[&str], env: &[(&str, &str)]) -> Server {
        let model = fixtures().join("tiny-sd1");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nullpaint"));
        cmd.args([
            "serve",
            "--model",
            model.to_str().unwrap(),
            "--backend",
            "cpu",
            "--port",
            "0",
        ])
        .args(extra)
        .env("NULLPAINT_LOG", "nullpaint::serve=info")
        .env_remove("NULLPAINT_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(300)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("the server did not start:\n{}", log.lock().unwrap());
            }
        };
        Server {
            child: Some(child),
            addr,
            log,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// POST /inpaint with `fields`; returns status, headers and body.
    fn post(&self, fields: &[(&str, Part)], headers: &[(&str, &str)]) -> Reply {
        let (content_type, body) = multipart(fields);
        self.post_raw(&content_type, &body, headers)
    }

    fn post_raw(&self, content_type: &str, body: &[u8], headers: &[(&str, &str)]) -> Reply {
        let mut request = agent()
            .post(self.url("/inpaint"))
            .header("content-type", content_type);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        reply(request.send(body).unwrap())
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = agent().get(self.url(path));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        reply(request.call().unwrap())
    }

    fn health(&self) -> serde_json::Value {
        serde_json::from_slice(&self.get("/health", &[]).body).unwrap()
    }

    /// Waits until `/health` satisfies `ok`, at most `timeout`; returns how long it took.
    fn wait_health(&self, timeout: Duration, ok: impl Fn(&serde_json::Value) -> bool) -> Duration {
        let start = Instant::now();
        loop {
            let h = self.health();
            if ok(&h) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "health never became as wanted: {h}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits for the process to end.
    fn terminate(&mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                return (status, self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "the server did not stop:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The `error` of a JSON error body (the text itself otherwise).
    fn error(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| self.text())
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into()
}

fn reply(mut r: ureq::http::Response<ureq::Body>) -> Reply {
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = r
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .unwrap();
    Reply {
        status,
        headers,
        body,
    }
}

#[derive(Clone)]
enum Part {
    Text(String),
    File(Vec<u8>),
}

fn text(s: &str) -> Part {
    Part::Text(s.to_string())
}

/// A multipart/form-data body, as browsers and curl send it.
fn multipart(fields: &[(&str, Part)]) -> (String, Vec<u8>) {
    let boundary = "----nullpaint-test-boundary-7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (name, part) in fields {
        write!(body, "--{boundary}\r\n").unwrap();
        match part {
            Part::Text(t) => write!(
                body,
                "Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{t}\r\n"
            )
            .unwrap(),
            Part::File(bytes) => {
                write!(
                    body,
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{name}.png\"\r\nContent-Type: image/png\r\n\r\n"
                )
                .unwrap();
                body.extend_from_slice(bytes);
                body.extend_from_slice(b"\r\n");
            }
        }
    }
    write!(body, "--{boundary}--\r\n").unwrap();
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// The red-apple case of the e2e fixtures (4 steps, seed 42, guided with "blurry").
fn apple(steps: usize) -> Vec<(&'static str, Part)> {
    vec![
        ("image", Part::File(e2e("sd1_guided_64x64.image.png"))),
        ("mask", Part::File(e2e("sd1_guided_64x64.mask.png"))),
        ("prompt", text("a red apple on a wooden table")),
        ("negative-prompt", text("blurry")),
        ("steps", text(&steps.to_string())),
        ("seed", text("42")),
        ("guidance_scale", text("7.5")),
    ]
}

fn max_level_diff(got: &[u8], want_png: &[u8]) -> u8 {
    common::max_level_diff(
        &image::load_from_memory(got).unwrap().to_rgb8(),
        &image::load_from_memory(want_png).unwrap().to_rgb8(),
    )
}

/// Server-sent events of a body: (event, data) pairs.
fn events(body: &str) -> Vec<(String, String)> {
    body.split("\n\n")
        .filter_map(|block| {
            let mut event = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = Some(e.trim().to_string());
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            event.map(|e| (e, data))
        })
        .collect()
}

/// A request written by hand on a socket, left open.
fn raw_request(addr: &str, head: &str, body: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    s
}

fn read_all(mut s: TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// One server: the reference picture (plain and as events), health, every kind of bad request,
/// a full queue, and a client that leaves mid-run.
#[test]
fn serve_answers_good_and_bad_requests() {
    let server = Server::start(
        &[
            "--queue",
            "1",
            "--max-upload-mb",
            "1",
            "--max-pixels",
            "20000",
            "--max-steps",
            "2000",
        ],
        &[],
    );
    let want = e2e("sd1_guided_64x64.out.png");

    // The picture is diffusers' (as the CLI's: within one level).
    let r = server.post(&apple(4), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("image/png"));
    assert_eq!(r.header("x-nullpaint-seed"), Some("42"));
    let level = max_level_diff(&r.body, &want);
    assert!(level <= 1, "differs from the reference by {level}");
    let seconds: f64 = r.header("x-nullpaint-seconds").unwrap().parse().unwrap();

    // The same as events: queued, started, progress per step, done with the PNG.
    let r = server.post(&apple(4), &[("accept", "text/event-stream")]);
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    let ev = events(&r.text());
    let names: Vec<&str> = ev.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names.first(), Some(&"queued"), "{names:?}");
    assert_eq!(names.get(1), Some(&"started"), "{names:?}");
    assert_eq!(names.last(), Some(&"done"), "{names:?}");
    let denoising: Vec<serde_json::Value> = ev
        .iter()
        .filter(|(e, _)| e == "progress")
        .map(|(_, d)| serde_json::from_str::<serde_json::Value>(d).unwrap())
        .filter(|d| d["stage"] == "denoising")
        .collect();
    let done_counts: Vec<u64> = denoising
        .iter()
        .map(|d| d["done"].as_u64().unwrap())
        .collect();
    assert!(done_counts.ends_with(&[1, 2, 3, 4]), "{done_counts:?}");
    let done: serde_json::Value = serde_json::from_str(&ev.last().unwrap().1).unwrap();
    let png = base64::engine::general_purpose::STANDARD
        .decode(done["png"].as_str().unwrap())
        .unwrap();
    assert!(max_level_diff(&png, &want) <= 1);
    assert_eq!(done["seed"], 42);

    // Health.
    let h = server.health();
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["served"], 2, "{h}");
    assert_eq!(h["queue_capacity"], 1, "{h}");

    // Bad requests: each a 4xx naming the problem, none reaching the engine.
    let image = e2e("sd1_guided_64x64.image.png");
    let mask = e2e("sd1_guided_64x64.mask.png");
    let big = {
        let img = image::RgbImage::from_pixel(200, 200, image::Rgb([9, 9, 9]));
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        png
    };
    let small_mask = {
        let img = image::GrayImage::from_pixel(32, 32, image::Luma([255]));
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        png
    };
    type Fields = Vec<(&'static str, Part)>;
    let cases: Vec<(&str, Fields, u16, &str)> = vec![
        (
            "no image",
            vec![("mask", Part::File(mask.clone()))],
            400,
            "no \"image\"",
        ),
        (
            "no mask",
            vec![("image", Part::File(image.clone()))],
            400,
            "no mask",
        ),
        (
            "unknown field",
            vec![
                ("image", Part::File(image.clone())),
                ("mask", Part::File(mask.clone())),
                ("sampler", text("euler")),
            ],
            400,
            "unknown field \"sampler\"",
        ),
        (
            "bad steps",
            vec![
                ("image", Part::File(image.clone())),
                ("mask", Part::File(mask.clone())),
                ("steps", text("many")),
            ],
            400,
            "steps",
        ),
        (
            "zero steps",
            vec![
                ("image", Part::File(image.clone())),
                ("mask", Part::File(mask.clone())),
                ("steps", text("0")),
            ],
            400,
            "at least 1",
        ),
        (
            "too many steps",
            vec![
                ("image", Part::File(image.clone())),
                ("mask", Part::File(mask.clone())),
                ("steps", text("5000")),
            ],
            400,
            "--max-steps",
        ),
        (
            "twice",
            vec![
                ("image", Part::File(image.clone())),
                ("image", Part::File(image.clone())),
            ],
            400,
            "twice",
        ),
        (
            "not a picture",
            vec![
                ("image", Part::File(b"GIF89a not really".to_vec())),
                ("mask", Part::File(mask.clone())),
            ],
            400,
            "cannot read the image",
        ),
        (
            "too many pixels",
            vec![
                ("image", Part::File(big)),
                ("mask", Part::File(mask.clone())),
            ],
            413,
            "--max-pixels",
        ),
        (
            "mask size",
            vec![
                ("image", Part::File(image.clone())),
                ("mask", Part::File(small_mask)),
            ],
            400,
            "same size",
        ),
        (
            "bad mode",
            vec![
                ("image", Part::File(image.clone())),
                ("mask", Part::File(mask.clone())),
                ("mode", text("inpaint-unet")),
            ],
            422,
            "inpainting UNet",
        ),
    ];
    for (name, fields, status, says) in cases {
        let r = server.post(&fields, &[]);
        assert_eq!(r.status, status, "{name}: {}", r.text());
        assert!(r.error().contains(says), "{name}: {}", r.text());
    }
    // Bodies no client library would send.
    let r = server.post_raw(
        "multipart/form-data; boundary=XYZ",
        b"--XYZ\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nunterminated",
        &[],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("multipart"), "{}", r.text());
    let r = server.post_raw("multipart/form-data", b"whatever", &[]);
    assert_eq!(r.status, 400, "no boundary: {}", r.text());
    let r = server.post_raw("application/json", b"{\"image\": 1}", &[]);
    assert!(
        r.status == 400 || r.status == 415,
        "json: {} {}",
        r.status,
        r.text()
    );
    let r = server.post_raw(
        "multipart/form-data; boundary=XYZ",
        b"\x00\xff\xfe garbage \r\n--XYZ--",
        &[],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    // An upload over --max-upload-mb is refused from its Content-Length, before its body is
    // read (so the client learns it without sending it).
    let s = raw_request(
        &server.addr,
        "POST /inpaint HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=XYZ\r\nContent-Length: 1200000\r\nConnection: close\r\n\r\n",
        b"",
    );
    let answer = read_all(s);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("--max-upload-mb"), "{answer}");
    // A body shorter than its Content-Length, then the client goes: no answer needed, no crash.
    let s = raw_request(
        &server.addr,
        "POST /inpaint HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=XYZ\r\nContent-Length: 100000\r\n\r\n",
        b"--XYZ\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\n",
    );
    drop(s);
    let h = server.health();
    assert_eq!(h["served"], 2, "bad requests reached the engine: {h}");
    assert_eq!(
        h["failed"], 1,
        "only the model's refusal (bad mode) ran on the engine: {h}"
    );

    // A full queue: one running, one waiting, the third refused with 429.
    let per_step = seconds / 4.0;
    let long = ((8.0 / per_step.max(1e-3)) as usize).clamp(50, 2000);
    let long_fields = apple(long);
    let first = {
        let f = long_fields.clone();
        let addr = server.addr.clone();
        std::thread::spawn(move || {
            let (ct, body) = multipart(&f);
            reply(
                agent()
                    .post(format!("http://{addr}/inpaint"))
                    .header("content-type", &ct)
                    .send(&body[..])
                    .unwrap(),
            )
            .status
        })
    };
    server.wait_health(Duration::from_secs(60), |h| h["busy"] == true);
    let second = {
        let addr = server.addr.clone();
        std::thread::spawn(move || {
            let (ct, body) = multipart(&apple(2));
            reply(
                agent()
                    .post(format!("http://{addr}/inpaint"))
                    .header("content-type", &ct)
                    .send(&body[..])
                    .unwrap(),
            )
            .status
        })
    };
    server.wait_health(Duration::from_secs(60), |h| h["queued"] == 1);
    let third = server.post(&apple(2), &[]);
    assert_eq!(third.status, 429, "{}", third.text());
    assert!(third.header("retry-after").is_some());
    assert!(third.text().contains("busy"), "{}", third.text());
    assert_eq!(first.join().unwrap(), 200);
    assert_eq!(second.join().unwrap(), 200);

    // A client that hangs up mid-run cancels its job: the engine is free long before the
    // job would have ended, and the next request is served.
    let (ct, body) = multipart(&long_fields);
    let head = format!(
        "POST /inpaint HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let s = raw_request(&server.addr, &head, &body);
    server.wait_health(Duration::from_secs(60), |h| h["busy"] == true);
    std::thread::sleep(Duration::from_millis(500));
    s.shutdown(std::net::Shutdown::Both).unwrap();
    drop(s);
    let freed = server.wait_health(Duration::from_secs(60), |h| h["busy"] == false);
    let full = per_step * long as f64;
    assert!(
        freed.as_secs_f64() < full / 2.0,
        "freed after {freed:?}; the job takes {full:.1} s"
    );
    assert!(server.log().contains("cancelled"), "{}", server.log());
    let r = server.post(&apple(4), &[]);
    assert_eq!(r.status, 200);
    assert!(max_level_diff(&r.body, &want) <= 1);

    // The same for an event stream that is closed.
    let head = format!(
        "POST /inpaint HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut s = raw_request(&server.addr, &head, &body);
    let mut first_bytes = [0u8; 256];
    let _ = s.read(&mut first_bytes).unwrap();
    server.wait_health(Duration::from_secs(60), |h| h["busy"] == true);
    drop(s);
    let freed = server.wait_health(Duration::from_secs(60), |h| h["busy"] == false);
    assert!(
        freed.as_secs_f64() < full / 2.0,
        "events: freed after {freed:?}"
    );
}

/// Four clients at once on a queue of 3: all are served, one at a time, each the picture it
/// would get alone.
#[test]
fn serve_four_concurrent_clients() {
    let server = Server::start(&["--queue", "3"], &[]);
    let want = e2e("sd1_guided_64x64.out.png");
    let start = Instant::now();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let addr = server.addr.clone();
            std::thread::spawn(move || {
                let (ct, body) = multipart(&apple(4));
                let t = Instant::now();
                let r = reply(
                    agent()
                        .post(format!("http://{addr}/inpaint"))
                        .header("content-type", &ct)
                        .send(&body[..])
                        .unwrap(),
                );
                (r, t.elapsed())
            })
        })
        .collect();
    let mut waits = Vec::new();
    for c in clients {
        let (r, took) = c.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(max_level_diff(&r.body, &want) <= 1);
        waits.push(took.as_secs_f64());
    }
    waits.sort_by(f64::total_cmp);
    eprintln!(
        "4 concurrent clients: answered after {waits:.2?} s, all in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(server.health()["served"], 4);
}

/// Off loopback a token is required; with one, requests without it get 401 (health stays
/// open); without one, only loopback Host names and no foreign web origins.
#[test]
fn serve_access_rules() {
    let model = fixtures().join("tiny-sd1");
    let out = Command::new(env!("CARGO_BIN_EXE_nullpaint"))
        .args([
            "serve",
            "--model",
            model.to_str().unwrap(),
            "--backend",
            "cpu",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
        ])
        .env_remove("NULLPAINT_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("token") && err.contains("0.0.0.0"), "{err}");

    let server = Server::start(
        &["--cors-origin", "http://localhost:8080"],
        &[("NULLPAINT_TOKEN", "s3cret")],
    );
    assert_eq!(server.get("/health", &[]).status, 200);
    let r = server.post(&apple(1), &[]);
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.header("www-authenticate").is_some());
    assert_eq!(
        server
            .post(&apple(1), &[("authorization", "Bearer wrong")])
            .status,
        401
    );
    assert_eq!(
        server
            .post(&apple(1), &[("authorization", "Bearer s3cret")])
            .status,
        200
    );
    // CORS: the allowed origin gets its headers, a preflight is answered, others are refused.
    let r = server.post(
        &apple(1),
        &[
            ("authorization", "Bearer s3cret"),
            ("origin", "http://localhost:8080"),
        ],
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://localhost:8080")
    );
    let r = reply(
        agent()
            .options(server.url("/inpaint"))
            .header("origin", "http://localhost:8080")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization")
            .call()
            .unwrap(),
    );
    assert_eq!(r.status, 204);
    assert!(
        r.header("access-control-allow-headers")
            .unwrap()
            .contains("authorization")
    );
    let r = server.post(
        &apple(1),
        &[
            ("authorization", "Bearer s3cret"),
            ("origin", "https://evil.example"),
        ],
    );
    assert_eq!(r.status, 403);
    assert!(r.text().contains("--cors-origin"), "{}", r.text());
    drop(server);

    // No token: a Host that is not loopback (DNS rebinding) is refused.
    let server = Server::start(&[], &[]);
    let r = server.get("/health", &[("host", "attacker.example:7861")]);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        server.get("/health", &[("host", "localhost:7861")]).status,
        200
    );
}

/// SIGTERM: the running job finishes and is answered, the waiting one gets 503, the process
/// exits 0; with no grace, the running job is abandoned with 503.
#[test]
fn serve_shuts_down_gracefully() {
    for grace in ["120", "0"] {
        let mut server = Server::start(
            &[
                "--queue",
                "2",
                "--shutdown-grace",
                grace,
                "--max-steps",
                "5000",
            ],
            &[],
        );
        let r = server.post(&apple(4), &[]);
        let per_step: f64 = r
            .header("x-nullpaint-seconds")
            .unwrap()
            .parse::<f64>()
            .unwrap()
            / 4.0;
        let steps = ((3.0 / per_step.max(1e-3)) as usize).clamp(20, 5000);
        let spawn = |steps: usize| {
            let addr = server.addr.clone();
            std::thread::spawn(move || {
                let (ct, body) = multipart(&apple(steps));
                reply(
                    agent()
                        .post(format!("http://{addr}/inpaint"))
                        .header("content-type", &ct)
                        .send(&body[..])
                        .unwrap(),
                )
            })
        };
        let running = spawn(steps);
        server.wait_health(Duration::from_secs(60), |h| h["busy"] == true);
        let waiting = spawn(2);
        server.wait_health(Duration::from_secs(60), |h| h["queued"] == 1);
        let addr = server.addr.clone();
        let (status, log) = server.terminate();
        assert!(status.success(), "{status:?}\n{log}");
        let running = running.join().unwrap();
        let waiting = waiting.join().unwrap();
        assert_eq!(waiting.status, 503, "{}", waiting.text());
        assert!(
            waiting.text().contains("shutting down"),
            "{}",
            waiting.text()
        );
        if grace == "0" {
            assert_eq!(running.status, 503, "{}", running.text());
            assert!(running.text().contains("abandoned"), "{}", running.text());
        } else {
            assert_eq!(running.status, 200, "{}", running.text());
            assert_eq!(running.header("content-type"), Some("image/png"));
        }
        assert!(log.contains("shut down"), "{log}");
        assert!(
            TcpStream::connect(&addr).is_err(),
            "still listening after the exit"
        );
    }
}

//! Test harness: `TestApp` runs the real app in-process on 127.0.0.1:0 with a manual clock;
//! `KeelProcess` runs the real binary; `Resp` is an HTTP answer; `send` is a request whose
//! transport errors are values (for servers that get killed); `Rng` is the one seeded PRNG of
//! the randomized tests, whose seed is printed when a test using it fails.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel::app::App;
use keel::clock::ManualClock;
use keel::config::Config;
use serde_json::Value;

/// The time every test app starts at: 2026-01-01T00:00:00Z.
pub const START_MS: i64 = 1_767_225_600_000;

/// An HTTP answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
}

impl Resp {
    /// The body as JSON (panics with the body when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `error.code` of a keel error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.code in {}", self.body))
            .to_string()
    }
}

/// splitmix64: the deterministic PRNG of the randomized tests. The seed comes from
/// `KEEL_TEST_SEED` (to replay a failure) or is the fixed default; a test that panics while it
/// holds the generator prints the seed and how to replay it.
pub struct Rng {
    state: u64,
    seed: u64,
    test: &'static str,
}

/// The seed used when `KEEL_TEST_SEED` is not set.
pub const DEFAULT_SEED: u64 = 0x6b65_656c_5eed;

impl Rng {
    /// The generator of the test named `test`.
    pub fn for_test(test: &'static str) -> Rng {
        let seed = match std::env::var("KEEL_TEST_SEED") {
            Ok(v) => v
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("KEEL_TEST_SEED={v} is not a number")),
            Err(_) => DEFAULT_SEED,
        };
        println!("{test}: seed {seed}");
        Rng {
            state: seed,
            seed,
            test,
        }
    }

    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

impl Drop for Rng {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{} failed with seed {}: replay with KEEL_TEST_SEED={} cargo test {}",
                self.test, self.seed, self.seed, self.test
            );
        }
    }
}

/// An HTTP agent that keeps connections alive, with every answer's status as a value.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .proxy(None)
        .build()
        .into()
}

/// Sends a request to `base + path` with an optional bearer key and body.
pub fn request(
    base: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> Resp {
    let url = format!("{base}{path}");
    let mut builder = ureq::http::Request::builder().method(method).uri(&url);
    if let Some(key) = key {
        builder = builder.header("authorization", format!("Bearer {key}"));
    }
    if let Some((content_type, _)) = body {
        builder = builder.header("content-type", content_type);
    }
    let req = builder
        .body(body.map(|(_, b)| b.to_vec()).unwrap_or_default())
        .expect("valid request");
    let mut response = agent()
        .run(req)
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()
        .unwrap_or_default();
    Resp {
        status,
        body,
        headers,
    }
}

/// A JSON request with a bearer key whose transport errors (refused, reset, cut off by a kill)
/// are an `Err` instead of a panic: after a SIGKILL that is what in-flight requests get.
pub fn send(
    agent: &ureq::Agent,
    base: &str,
    method: &str,
    path: &str,
    key: &str,
    body: Option<&Value>,
) -> Result<Resp, String> {
    let url = format!("{base}{path}");
    let mut builder = ureq::http::Request::builder()
        .method(method)
        .uri(&url)
        .header("authorization", format!("Bearer {key}"));
    let bytes = match body {
        Some(v) => {
            builder = builder.header("content-type", "application/json");
            serde_json::to_vec(v).expect("JSON body")
        }
        None => Vec::new(),
    };
    let request = builder.body(bytes).map_err(|e| e.to_string())?;
    let mut response = agent
        .run(request)
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()
        .map_err(|e| format!("{method} {url}: reading the answer: {e}"))?;
    Ok(Resp {
        status,
        body,
        headers: Vec::new(),
    })
}

/// A request to a server that must be up: any transport error fails the test.
pub fn call(agent: &ureq::Agent, base: &str, method: &str, path: &str, key: &str) -> Resp {
    send(agent, base, method, path, key, None).unwrap_or_else(|e| panic!("{e}"))
}

/// The real app, in-process, on 127.0.0.1:0, with a manual clock and a temporary data dir.
pub struct TestApp {
    pub app: Arc<App>,
    pub base: String,
    pub clock: Arc<ManualClock>,
    pub admin_key: String,
    pub dir: tempfile::TempDir,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

/// A configuration for tests: defaults, the given data dir, an ephemeral port, the test
/// client's own address (loopback) allowlisted, so that tests of refused keys are not blocked,
/// and no limit on sign-ins per key.
/// Security tests clear the allowlist, or send `X-Forwarded-For` to appear as other clients.
pub fn test_config(data_dir: &Path) -> Config {
    let mut config = Config {
        data_dir: data_dir.to_path_buf(),
        ..Config::default()
    };
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.security.allowlist = vec!["127.0.0.1".into(), "::1".into()];
    // Tests sign in to the dashboard far more often than people do.
    config.security.session_limit.requests = 0;
    config
}

impl TestApp {
    /// Starts with the default test configuration.
    pub fn start() -> TestApp {
        Self::start_with(|_| {})
    }

    /// Starts after `configure` adjusts the test configuration.
    pub fn start_with(configure: impl FnOnce(&mut Config)) -> TestApp {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, configure)
    }

    /// Starts on an existing data dir (e.g. one a previous `TestApp` used).
    pub fn start_in(dir: tempfile::TempDir, configure: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = test_config(dir.path());
        configure(&mut config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let clock = Arc::new(ManualClock::new(START_MS));
        let (app, listener) = runtime.block_on(async {
            let app = App::start(config.clone(), clock.clone())
                .await
                .expect("app starts");
            let listener = tokio::net::TcpListener::bind(config.server.listen)
                .await
                .expect("bind");
            (app, listener)
        });
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let router = keel::http::router(app.http_state());
        let server = runtime.spawn(async move {
            let _ = keel::http::serve(listener, router, async {
                let _ = stopped.await;
            })
            .await;
        });
        let admin_key = std::fs::read_to_string(dir.path().join("initial-admin-key"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        TestApp {
            app,
            base,
            clock,
            admin_key,
            dir,
            runtime: Some(runtime),
            stop: Some(stop),
            server: Some(server),
        }
    }

    /// Runs a future on the app's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.as_ref().expect("running").block_on(f)
    }

    /// Any request.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<(&str, &[u8])>,
    ) -> Resp {
        request(&self.base, method, path, key, body)
    }

    /// GET with a key.
    pub fn get(&self, path: &str, key: Option<&str>) -> Resp {
        self.request("GET", path, key, None)
    }

    /// POST a JSON value with a key.
    pub fn post_json(&self, path: &str, key: Option<&str>, body: &Value) -> Resp {
        let bytes = serde_json::to_vec(body).unwrap();
        self.request("POST", path, key, Some(("application/json", &bytes)))
    }

    /// GET as the initial admin.
    pub fn admin_get(&self, path: &str) -> Resp {
        self.get(path, Some(&self.admin_key))
    }

    /// Creates a key with `role` through the API and returns the full key.
    pub fn create_key(&self, role: &str) -> String {
        let r = self.post_json(
            "/api/v1/keys",
            Some(&self.admin_key),
            &serde_json::json!({"name": format!("test-{role}"), "role": role}),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["token"].as_str().unwrap().to_string()
    }

    /// Stops serving, drains and closes the store; returns the data dir for reuse.
    pub fn stop(mut self) -> tempfile::TempDir {
        self.shutdown();
        let dir = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.dir, dir)
    }

    fn shutdown(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            let server = self.server.take();
            let app = Arc::clone(&self.app);
            runtime.block_on(async move {
                if let Some(server) = server {
                    let _ = server.await;
                }
                app.shutdown().await;
            });
            runtime.shutdown_timeout(Duration::from_secs(10));
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A `keel` command with no `KEEL_*` variables inherited from the environment.
pub fn keel_cmd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
    for (name, _) in std::env::vars() {
        if name.starts_with("KEEL_") || name == "RUST_LOG" {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Output of a finished `keel` command.
#[derive(Debug)]
pub struct CmdOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `keel args…` to completion.
pub fn run_keel(args: &[&str], env: &[(&str, &str)]) -> CmdOutput {
    let mut cmd = keel_cmd();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run keel");
    CmdOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The real `keel serve` as a child process on an ephemeral port.
pub struct KeelProcess {
    pub child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl KeelProcess {
    /// Starts `keel serve` on `data_dir`; waits until it logs its address. Returns the
    /// stderr it printed if it exits first.
    pub fn spawn(data_dir: &Path, env: &[(&str, &str)]) -> Result<KeelProcess, String> {
        let mut cmd = Self::command(data_dir);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::start(cmd, data_dir)
    }

    /// The `keel serve` command [`KeelProcess::spawn`] runs, to adjust before [`KeelProcess::start`].
    pub fn command(data_dir: &Path) -> Command {
        let mut cmd = keel_cmd();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("KEEL_LOG__FORMAT", "json")
            .env("KEEL_LOG__LEVEL", "info")
            // As in `test_config`: the test client (loopback) is never blocked or limited.
            .env("KEEL_SECURITY__ALLOWLIST", "127.0.0.1,::1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    /// Starts `cmd` (a [`KeelProcess::command`]) and waits until it logs its address.
    pub fn start(mut cmd: Command, data_dir: &Path) -> Result<KeelProcess, String> {
        let mut child = cmd.spawn().map_err(|e| e.to_string())?;
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(stderr).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut address = None;
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            log.lock().unwrap().push(line.clone());
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v["fields"]["message"] == "keel is serving"
            {
                address = v["fields"]["address"].as_str().map(str::to_string);
                break;
            }
        }
        let Some(address) = address else {
            let _ = child.wait();
            return Err(log.lock().unwrap().join("\n"));
        };
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Ok(KeelProcess {
            child,
            base: format!("http://{address}"),
            data_dir: data_dir.to_path_buf(),
            log,
        })
    }

    /// The admin key the first start wrote.
    pub fn admin_key(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("initial-admin-key"))
            .expect("initial admin key")
            .trim()
            .to_string()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for a clean exit; returns the exit code.
    pub fn terminate(mut self) -> i32 {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child
            .wait()
            .map(|s| s.code().unwrap_or(-1))
            .unwrap_or(-1)
    }
}

impl Drop for KeelProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a request with exactly the given headers (no key added) and an optional raw body.
pub fn request_with_headers(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let url = format!("{base}{path}");
    let mut builder = ureq::http::Request::builder().method(method).uri(&url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let req = builder
        .body(body.map(<[u8]>::to_vec).unwrap_or_default())
        .expect("valid request");
    let mut response = agent()
        .run(req)
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()
        .unwrap_or_default();
    Resp {
        status,
        body,
        headers,
    }
}

impl TestApp {
    /// The audit head's sequence number, read through the API as the initial admin.
    pub fn audit_seq(&self) -> u64 {
        let r = self.admin_get("/api/v1/audit/head");
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["seq"].as_u64().expect("head seq")
    }

    /// Creates a key through the API as the initial admin; returns (id, token).
    pub fn create_key_with(&self, body: &Value) -> (String, String) {
        let r = self.post_json("/api/v1/keys", Some(&self.admin_key), body);
        assert_eq!(r.status, 201, "{}", r.body);
        let v = r.json();
        (
            v["key"]["id"].as_str().expect("key id").to_string(),
            v["token"].as_str().expect("token").to_string(),
        )
    }
}

/// Calls `check` every 10 ms until it returns `Ok`, and returns that value. After a minute the
/// test fails with `what` and the last `Err` (which should describe the state seen).
pub fn poll_until<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "gave up after 60 s waiting for {what}; last seen: {last}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

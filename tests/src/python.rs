//! The Python peers in `tests/python`: WebSocket and gRPC clients and servers from other
//! implementations than ours, run as processes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use tokio::process::Command;

use crate::process::{Process, run, text};

/// The Python modules the scripts in `tests/python` import, beyond the standard library.
pub const MODULES: [&str; 3] = ["websockets", "grpc", "google.protobuf"];

/// The Debian packages that provide [`MODULES`].
pub const DEBIAN_PACKAGES: &str = "python3-websockets python3-grpcio python3-protobuf";

/// Whether `interpreter` can import every one of `modules`.
fn can_import(interpreter: &Path, modules: &[&str]) -> bool {
    std::process::Command::new(interpreter)
        .arg("-c")
        .arg(format!("import {}", modules.join(", ")))
        .output()
        .is_ok_and(|out| out.status.success())
}

/// The Python interpreter to run the scripts with: `$SESAME_PYTHON` when set; else
/// `/usr/bin/python3` (where Debian's packages install their modules) when it can import
/// `websockets` and `grpc`; else `python3` from `PATH`.
pub fn python() -> PathBuf {
    static CHOSEN: OnceLock<PathBuf> = OnceLock::new();
    CHOSEN
        .get_or_init(|| {
            if let Some(python) = std::env::var_os("SESAME_PYTHON").filter(|p| !p.is_empty()) {
                return PathBuf::from(python);
            }
            let system = Path::new("/usr/bin/python3");
            if can_import(system, &["websockets", "grpc"]) {
                return system.to_owned();
            }
            PathBuf::from("python3")
        })
        .clone()
}

/// Fails the test, naming what to install, unless [`python()`] can import each of `modules`.
pub fn require_python_modules(modules: &[&str]) {
    let python = python();
    let missing = modules
        .iter()
        .filter(|module| !can_import(&python, &[module]))
        .copied()
        .collect::<Vec<_>>();
    assert!(
        missing.is_empty(),
        "{} cannot import {}: install them with `apt-get install {DEBIAN_PACKAGES}` \
         (scripts/test.sh does), or point SESAME_PYTHON at an interpreter that has them",
        python.display(),
        missing.join(", "),
    );
}

/// The path of the script `name` in `tests/python`.
pub fn script_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

/// A command that runs the script `name` from `tests/python` with [`python()`], unbuffered;
/// add its arguments.
pub fn script(name: &str) -> Command {
    let mut command = Command::new(python());
    command.arg("-u").arg(script_path(name));
    command
}

/// Runs the script `name` with `args` to its end (bounded by [`crate::process::RUN_TIMEOUT`]).
pub async fn run_script(name: &str, args: &[&str]) -> Output {
    let mut command = script(name);
    command.args(args);
    run(command).await
}

/// The JSON report a client script prints as its last stdout line; fails the test, with its
/// stderr, unless the script exited 0 and reported `"ok": true`.
pub fn report(name: &str, output: &Output) -> serde_json::Value {
    let stdout = text(&output.stdout);
    let stderr = text(&output.stderr);
    assert!(
        output.status.success(),
        "{name} failed ({}):\n{stderr}{stdout}",
        output.status
    );
    let last = stdout.lines().last().unwrap_or_default();
    let report: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("{name} printed no JSON report ({e}):\n{stdout}{stderr}"));
    assert_eq!(report["ok"], true, "{name} reported: {report}");
    report
}

/// `ws_echo.py server`: a WebSocket echo server (the `websockets` library) on `127.0.0.1:0`.
/// It echoes text and binary messages, and answers the text message `whoami` with JSON of the
/// request's path and `Host` header: `{"path": "...", "host": "..."}`. Killed when dropped.
#[derive(Debug)]
pub struct WsEchoServer {
    process: Process,
    addr: SocketAddr,
}

impl WsEchoServer {
    /// Starts the server and waits until it listens.
    pub async fn start() -> Self {
        require_python_modules(&["websockets"]);
        let mut command = script("ws_echo.py");
        command.arg("server");
        let mut process = Process::start(command);
        let line = process.first_line().await;
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("ws_echo.py server printed {line:?}, not a port"));
        WsEchoServer {
            process,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server process, to read what it printed.
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }
}

/// Runs `ws_echo.py client URL ARGS` (`--messages N`, `--size BYTES`, `--cafile FILE`,
/// `--connect HOST:PORT`) and returns its report: `{"ok": true, "messages": N, "bytes":
/// TOTAL, "whoami": {"path": ..., "host": ...}}`. Fails the test if the client fails.
pub async fn ws_echo_client(url: &str, args: &[&str]) -> serde_json::Value {
    require_python_modules(&["websockets"]);
    let mut all = vec!["client", url];
    all.extend_from_slice(args);
    report("ws_echo.py client", &run_script("ws_echo.py", &all).await)
}

/// Runs `grpc_echo_client.py --target TARGET ARGS` (`--authority NAME`, `--tls-ca FILE`,
/// `--tls-server-name NAME`, `--messages N`, `--size BYTES`) and returns its report:
/// `{"ok": true, "unary_authority": "...", "chat_messages": N}`. Fails the test if the
/// client fails.
pub async fn grpc_echo_client(target: &str, args: &[&str]) -> serde_json::Value {
    require_python_modules(&["grpc", "google.protobuf"]);
    let mut all = vec!["--target", target];
    all.extend_from_slice(args);
    report(
        "grpc_echo_client.py",
        &run_script("grpc_echo_client.py", &all).await,
    )
}

/// One sample of a scrape: the metric's name, its labels, its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's name (`sesame_relay_bytes_total`).
    pub name: String,
    /// Its labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// The samples of `url` (a `/metrics` endpoint), as `scrape.py` reads them with Python's
/// `prometheus_client` parser.
pub async fn scrape(url: &str) -> Vec<Sample> {
    require_python_modules(&["prometheus_client"]);
    let output = run_script("scrape.py", &[url]).await;
    let report = report("scrape.py", &output);
    let samples = report["samples"].as_array().expect("a list of samples");
    samples
        .iter()
        .map(|sample| Sample {
            name: sample[0].as_str().expect("a name").to_owned(),
            labels: sample[1]
                .as_object()
                .expect("labels")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("a label value").to_owned()))
                .collect(),
            value: sample[2].as_f64().expect("a value"),
        })
        .collect()
}

/// The value of the sample `name` with `labels` among `samples`, if there is one.
pub fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|sample| {
            sample.name == name
                && labels
                    .iter()
                    .all(|(k, v)| sample.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|sample| sample.value)
}

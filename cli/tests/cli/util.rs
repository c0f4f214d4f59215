//! Running the real `sesame` binary and the real peers (curl, python3) as processes, with
//! every wait bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The longest any one step may take before the test fails.
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// The binary under test.
pub(crate) fn sesame() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sesame"));
    command
        .env_remove("SESAME_RELAY")
        .env_remove("SESAME_TOKEN")
        .env_remove("SESAME_FINGERPRINT")
        .env_remove("SESAME_CA")
        .env_remove("SESAME_DATA_DIR")
        .env_remove("RUST_LOG")
        // Nothing a user stored, and no keyring: each command starts from nothing.
        .env("SESAME_CONFIG_DIR", scratch_dir())
        .env("SESAME_KEYRING", "off")
        .env("NO_COLOR", "1");
    command
}

/// Fails clearly when a tool the tests need is missing.
pub(crate) fn require(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(found, "{tool} is required: scripts/test.sh installs it");
}

/// A fresh directory for one test.
pub(crate) fn scratch_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "cli-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `len` random bytes.
pub(crate) fn random_bytes(len: usize) -> Vec<u8> {
    let mut data = vec![0; len];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut data)
        .unwrap();
    data
}

/// The SHA-256 of `data`, in hex.
pub(crate) fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A port on loopback that nothing listens on.
pub(crate) fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a command to its end, feeding it `stdin`; fails the test if it takes too long.
pub(crate) fn run(mut command: Command, stdin: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    let pid = child.id();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let (done, finished) = mpsc::channel();
    thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(STEP_TIMEOUT) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{command:?} did not finish within {STEP_TIMEOUT:?}");
        }
    }
}

/// Runs `sesame ARGS` to its end with empty stdin.
pub(crate) fn sesame_run(args: &[&str]) -> Output {
    let mut command = sesame();
    command.args(args);
    run(command, b"")
}

/// Text of a command's output stream.
pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Which output stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// A long-running process whose output lines the test waits on. Killed when dropped.
pub(crate) struct Proc {
    child: Child,
    lines: mpsc::Receiver<(Stream, String)>,
    seen: Vec<(Stream, String)>,
}

impl Proc {
    /// Starts `command` with piped output.
    pub(crate) fn start(mut command: Command) -> Proc {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let (sender, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for (stream, pipe) in [
            (Stream::Stdout, Box::new(stdout) as Box<dyn Read + Send>),
            (Stream::Stderr, Box::new(stderr)),
        ] {
            let sender = sender.clone();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if sender.send((stream, line)).is_err() {
                        break;
                    }
                }
            });
        }
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Starts `sesame ARGS`.
    pub(crate) fn sesame(args: &[&str]) -> Proc {
        let mut command = sesame();
        command.args(args);
        Proc::start(command)
    }

    /// Waits for a stdout line that `matches` accepts, and returns it.
    pub(crate) fn wait_for(&mut self, matches: impl Fn(&str) -> bool) -> String {
        self.wait_for_on(Stream::Stdout, matches)
    }

    /// Waits for a line on `wanted` that `matches` accepts, and returns it.
    pub(crate) fn wait_for_on(&mut self, wanted: Stream, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((stream, line)) => {
                    self.seen.push((stream, line.clone()));
                    if stream == wanted && matches(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "the expected line never came; output so far:\n{}",
                    self.transcript()
                ),
            }
        }
    }

    /// Waits for the process to exit (it must close its output first) and returns its
    /// status and everything it printed.
    pub(crate) fn wait_exit(&mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "the process did not exit; output so far:\n{}",
                        self.transcript()
                    )
                }
            }
        }
        (self.child.wait().unwrap(), self.transcript())
    }

    /// Sends a signal (`TERM`, `KILL`, ...).
    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Whether the process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Everything printed so far, stderr lines marked.
    pub(crate) fn transcript(&self) -> String {
        self.seen
            .iter()
            .map(|(stream, line)| match stream {
                Stream::Stdout => format!("{line}\n"),
                Stream::Stderr => format!("[stderr] {line}\n"),
            })
            .collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first admin token of a relay started on a new data directory: its output is a pipe, so
/// the relay leaves the token in a file and names the file.
pub(crate) fn admin_token(relay: &mut Proc) -> String {
    let line = relay.wait_for(|line| line.trim_start().starts_with("admin token file: "));
    let path = line.trim().trim_start_matches("admin token file: ");
    let token = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read the admin token file {path}: {e}"));
    token.trim().to_owned()
}

/// A relay on an ephemeral port, with TLS (a self-signed certificate) and tokens, as
/// `relay serve` runs by default.
pub(crate) struct Relay {
    pub proc: Proc,
    /// `https://127.0.0.1:PORT`
    pub url: String,
    /// Where it keeps its tokens and certificate.
    pub data_dir: PathBuf,
    /// Its admin token.
    pub token: String,
    /// Its certificate's fingerprint.
    pub fingerprint: String,
}

impl Relay {
    pub(crate) fn start() -> Relay {
        Relay::start_with("127.0.0.1:0", &[])
    }

    /// A relay on `addr` with more `relay serve` arguments.
    pub(crate) fn start_with(addr: &str, extra: &[&str]) -> Relay {
        let data_dir = scratch_dir();
        let mut proc = Relay::serve(addr, &data_dir, extra);
        let line = proc.wait_for(|line| line.starts_with("relay listening on "));
        let addr = line.trim_start_matches("relay listening on ").to_owned();
        let line = proc.wait_for(|line| line.trim_start().starts_with("fingerprint: "));
        let fingerprint = line.trim().trim_start_matches("fingerprint: ").to_owned();
        let token = admin_token(&mut proc);
        Relay {
            proc,
            url: format!("https://{addr}"),
            data_dir,
            token,
            fingerprint,
        }
    }

    /// A relay on this one's address and data directory, standing in for it after it stopped:
    /// same tokens, same certificate.
    pub(crate) fn successor(&self) -> Relay {
        let addr = self.url.trim_start_matches("https://");
        let mut proc = Relay::serve(addr, &self.data_dir, &[]);
        proc.wait_for(|line| line.starts_with("relay listening on "));
        Relay {
            proc,
            url: self.url.clone(),
            data_dir: self.data_dir.clone(),
            token: self.token.clone(),
            fingerprint: self.fingerprint.clone(),
        }
    }

    fn serve(addr: &str, data_dir: &Path, extra: &[&str]) -> Proc {
        let data_dir = data_dir.to_str().expect("a UTF-8 path");
        let mut args = vec!["relay", "serve", "--listen", addr, "--grace", "2s"];
        args.extend_from_slice(&["--data-dir", data_dir]);
        args.extend_from_slice(extra);
        Proc::sesame(&args)
    }

    /// `sesame` with this relay, its fingerprint and `token`.
    pub(crate) fn command_with(&self, token: &str) -> Command {
        let mut command = sesame();
        command
            .args(["--relay", &self.url, "--fingerprint", &self.fingerprint])
            .args(["--token", token]);
        command
    }

    /// Creates a token with `scopes` through `relay token create`, and returns it.
    pub(crate) fn create_token(&self, scopes: &[&str]) -> String {
        let mut args = vec!["relay", "token", "create"];
        for scope in scopes {
            args.extend_from_slice(&["--scope", scope]);
        }
        let output = self.run(&args, b"");
        let stdout = text(&output.stdout);
        assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
        let secret = stdout
            .lines()
            .map(str::trim)
            .find(|line| line.starts_with("sesame_"))
            .unwrap_or_else(|| panic!("no token in {stdout}"));
        secret.to_owned()
    }

    /// `sesame` with this relay, its fingerprint and the admin token.
    pub(crate) fn command(&self) -> Command {
        self.command_with(&self.token)
    }

    /// `sesame --relay URL ARGS` with the admin token, as a long-running process.
    pub(crate) fn sesame(&self, args: &[&str]) -> Proc {
        let mut command = self.command();
        command.args(args);
        Proc::start(command)
    }

    /// `sesame --relay URL ARGS` with the admin token, run to its end with `stdin`.
    pub(crate) fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut command = self.command();
        command.args(args);
        run(command, stdin)
    }

    /// Exposes `ports` as `name` and waits until every port is reachable.
    pub(crate) fn expose(&self, name: &str, ports: &[&str]) -> Proc {
        let mut args = vec!["expose", "--name", name];
        args.extend_from_slice(ports);
        let mut proc = self.sesame(&args);
        proc.wait_for(|line| line.starts_with(&format!("remote {name} is connected")));
        for _ in ports {
            proc.wait_for(|line| line.contains("reach it with:"));
        }
        proc
    }
}

/// A TCP service on an ephemeral port that writes `tick N` lines to each client, one every
/// 20 ms, until the client goes away: a transfer that is always in progress.
pub(crate) struct Ticker {
    pub _proc: Proc,
    pub port: u16,
}

impl Ticker {
    pub(crate) fn start() -> Ticker {
        require("python3");
        const SCRIPT: &str = r#"
import socket, sys, threading, time
def tick(conn):
    with conn:
        for n in range(1_000_000):
            try:
                conn.sendall(b"tick %d\n" % n)
            except OSError:
                return
            time.sleep(0.02)
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)
while True:
    conn, _ = server.accept()
    threading.Thread(target=tick, args=(conn,), daemon=True).start()
"#;
        let mut command = Command::new("python3");
        command.args(["-u", "-c", SCRIPT]);
        let mut proc = Proc::start(command);
        let port = proc.wait_for(|_| true).trim().parse().expect("a port");
        Ticker { _proc: proc, port }
    }
}

/// `python3 -m http.server` on an ephemeral port, serving a directory with one random file.
pub(crate) struct HttpServer {
    pub _proc: Proc,
    pub port: u16,
    /// The file's name and contents.
    pub file: (String, Vec<u8>),
}

impl HttpServer {
    pub(crate) fn start(file_len: usize) -> HttpServer {
        require("python3");
        let dir = scratch_dir();
        let data = random_bytes(file_len);
        std::fs::write(dir.join("data.bin"), &data).unwrap();
        let mut command = Command::new("python3");
        command
            .args([
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(&dir);
        let mut proc = Proc::start(command);
        let line = proc.wait_for(|line| line.starts_with("Serving HTTP on"));
        let port = line
            .split_whitespace()
            .skip_while(|word| *word != "port")
            .nth(1)
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        HttpServer {
            _proc: proc,
            port,
            file: ("data.bin".to_owned(), data),
        }
    }
}

/// Splits an HTTP/1.0 response into its status line and body.
pub(crate) fn http_body(response: &[u8]) -> (String, &[u8]) {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = text(&response[..end]);
    (
        head.lines().next().unwrap_or_default().to_owned(),
        &response[end + 4..],
    )
}

/// A certificate authority named `who`, and a certificate for a relay on 127.0.0.1 that it
/// signed, as PEM files in `dir`: returns the paths of the authority's certificate, the relay's
/// certificate and the relay's key.
pub(crate) fn authority_and_relay_certificate(
    dir: &Path,
    who: &str,
) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{who} CA"));
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let relay_key = KeyPair::generate().unwrap();
    let mut relay_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    relay_params.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
    let relay_cert = relay_params.signed_by(&relay_key, &issuer).unwrap();
    let paths = (
        dir.join(format!("{who}-ca.pem")),
        dir.join(format!("{who}-relay.pem")),
        dir.join(format!("{who}-relay-key.pem")),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, relay_cert.pem()).unwrap();
    std::fs::write(&paths.2, relay_key.serialize_pem()).unwrap();
    paths
}

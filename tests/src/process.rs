//! Running real peers (curl, python3 scripts) as processes, with every wait bounded.

use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The longest a process may take to print an awaited line or to exit after being asked.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest a command run to its end may take: above the clients' own 60 s limits, so
/// that they report their failures themselves.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// Fails clearly when a command-line tool the tests need is missing.
pub fn require_tool(tool: &str) {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(found, "{tool} is required: scripts/test.sh installs it");
}

/// Runs `command` to its end with empty input, capturing its output; kills it and fails the
/// test if it takes longer than [`RUN_TIMEOUT`].
pub async fn run(mut command: Command) -> Output {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    match tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => output.unwrap(),
        Err(_) => panic!("{command:?} did not finish within {RUN_TIMEOUT:?}"),
    }
}

/// Text of a command's output stream.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Which output stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A long-running process whose output lines a test waits on. Killed when dropped.
#[derive(Debug)]
pub struct Process {
    child: Child,
    lines: mpsc::UnboundedReceiver<(Stream, String)>,
    seen: Vec<(Stream, String)>,
    name: String,
}

impl Process {
    /// Starts `command` with empty input and its output read line by line.
    pub fn start(mut command: Command) -> Process {
        let name = format!("{command:?}");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (sender, lines) = mpsc::unbounded_channel();
        forward_lines(child.stdout.take().unwrap(), Stream::Stdout, sender.clone());
        forward_lines(child.stderr.take().unwrap(), Stream::Stderr, sender);
        Process {
            child,
            lines,
            seen: Vec::new(),
            name,
        }
    }

    /// Waits for a stdout line that `matches` accepts, for at most [`STEP_TIMEOUT`], and
    /// returns it; fails the test with everything printed so far otherwise.
    pub async fn wait_for(&mut self, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some((stream, line))) => {
                    self.seen.push((stream, line.clone()));
                    if stream == Stream::Stdout && matches(&line) {
                        return line;
                    }
                }
                Ok(None) => panic!(
                    "{} ended before printing the expected line; output:\n{}",
                    self.name,
                    self.transcript()
                ),
                Err(_) => panic!(
                    "{} did not print the expected line within {STEP_TIMEOUT:?}; output so far:\n{}",
                    self.name,
                    self.transcript()
                ),
            }
        }
    }

    /// The first line the process prints on stdout.
    pub async fn first_line(&mut self) -> String {
        self.wait_for(|_| true).await
    }

    /// Waits, for at most [`STEP_TIMEOUT`], for the process to close its output and exit;
    /// returns its status and everything it printed.
    pub async fn wait_exit(&mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => self.seen.push(line),
                Ok(None) => break,
                Err(_) => panic!(
                    "{} did not exit within {STEP_TIMEOUT:?}; output so far:\n{}",
                    self.name,
                    self.transcript()
                ),
            }
        }
        let status = tokio::time::timeout_at(deadline, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} closed its output but did not exit", self.name))
            .unwrap();
        (status, self.transcript())
    }

    /// The process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Everything printed so far, stderr lines marked.
    pub fn transcript(&self) -> String {
        self.seen
            .iter()
            .map(|(stream, line)| match stream {
                Stream::Stdout => format!("{line}\n"),
                Stream::Stderr => format!("[stderr] {line}\n"),
            })
            .collect()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Sends each line of `pipe` to `sender` until the pipe or the channel closes.
fn forward_lines(
    pipe: impl AsyncRead + Unpin + Send + 'static,
    stream: Stream,
    sender: mpsc::UnboundedSender<(Stream, String)>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if sender.send((stream, line)).is_err() {
                break;
            }
        }
    });
}

/// A fresh directory for one test, removed with everything in it when dropped.
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sesame-test-")
        .tempdir()
        .unwrap()
}

/// `curl -sS` without any proxy, dumping the response head to stderr, with `args`; fails
/// the test unless curl succeeds. Returns the body (stdout) and the head (stderr).
pub async fn curl(args: &[&str]) -> (Vec<u8>, String) {
    require_tool("curl");
    let mut command = Command::new("curl");
    command
        .args([
            "-sS",
            "--noproxy",
            "*",
            "--max-time",
            "60",
            "-D",
            "/dev/stderr",
        ])
        .args(args);
    let Output {
        status,
        stdout,
        stderr,
    } = run(command).await;
    let stderr = text(&stderr);
    assert!(
        status.success(),
        "curl {args:?} failed ({status}):\n{stderr}"
    );
    (stdout, stderr)
}

/// The value of header `name` in a dumped response head, if any.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

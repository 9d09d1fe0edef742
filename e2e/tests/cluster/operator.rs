//! The `ringway-operator` process a test runs, waiting on it for the
//! cluster to show something, asking its health port, and reading its log
//! for refused requests.

use std::{
    ffi::OsStr,
    fs::File,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Instant,
};

use anyhow::{Context, bail, ensure};

use super::{DEADLINE, POLL_EVERY};

/// The `ringway-operator` process, killed when dropped.
pub struct Operator(Child);

impl Operator {
    /// With the test's own (admin) kubeconfig, watching `namespace` alone,
    /// without leader election; its log goes to the test's output.
    pub fn start(
        binary: &Path,
        kubeconfig: &OsStr,
        namespace: &str,
        image: &str,
    ) -> anyhow::Result<Self> {
        let args = [
            "--namespace",
            namespace,
            "--leader-election=false",
            "--image",
            image,
            "--metrics-address",
            "127.0.0.1:0",
            "--log-format",
            "text",
        ]
        .map(str::to_owned);
        Self::spawn(binary, kubeconfig, &args, &[], None)
    }

    /// `binary args...` with `KUBECONFIG=kubeconfig` and `env`; stdout and
    /// stderr go to `log` when given. `--log` is [`log_filter`] unless
    /// `args` name one.
    pub fn spawn(
        binary: &Path,
        kubeconfig: &OsStr,
        args: &[String],
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(binary);
        command.args(args);
        if !args.iter().any(|a| a == "--log" || a.starts_with("--log=")) {
            command.arg(format!("--log={}", log_filter()));
        }
        command
            .env("KUBECONFIG", kubeconfig)
            // The log is read by a program; colours would only get in the way.
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null());
        if let Some(log) = log {
            let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
            command.stdout(file.try_clone()?).stderr(file);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self(child))
    }

    /// Fails if the operator has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.0.try_wait()? {
            Some(status) => bail!("ringway-operator exited: {status}"),
            None => Ok(()),
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The address of the health and metrics port, from the operator's text
/// log (`serving /metrics, /healthz and /readyz address=…`): it binds port 0.
pub fn health_address(log: &Path) -> anyhow::Result<SocketAddr> {
    let text = std::fs::read_to_string(log)?;
    let line = text
        .lines()
        .find(|l| l.contains("serving /metrics"))
        .context("the operator has not logged its health port yet")?;
    let address = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("address="))
        .with_context(|| format!("no address= in {line:?}"))?;
    address
        .parse()
        .with_context(|| format!("{address:?} is not an address"))
}

/// The status code of `GET path` on the operator's health port.
pub fn http_status(address: SocketAddr, path: &str) -> anyhow::Result<u16> {
    http_get(address, path).map(|(status, _)| status)
}

/// The status code and the whole answer (head and body) of `GET path` on
/// the operator's health port.
pub fn http_get(address: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, POLL_EVERY)?;
    stream.set_read_timeout(Some(DEADLINE))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP answer: {answer:?}"))?;
    Ok((status, answer))
}

/// The operator's `--log` filter: `RUST_LOG` if set, else info with the
/// operator's own debug lines.
fn log_filter() -> String {
    std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "info,ringway_operator=debug".to_owned())
}

/// Retries `check` until it passes or [`DEADLINE`] runs out; fails at once
/// if the operator exits.
pub fn eventually(
    operator: &mut Operator,
    what: &str,
    check: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    wait_until(what, check, || operator.ensure_running())
}

/// Retries `check` until it passes or [`DEADLINE`] runs out; an error from
/// `alive` between two tries ends the wait at once.
pub fn wait_until(
    what: &str,
    mut check: impl FnMut() -> anyhow::Result<()>,
    mut alive: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        match check() {
            Ok(()) => {
                println!("ok: {what} after {:.1?}", started.elapsed());
                return Ok(());
            }
            Err(e) if started.elapsed() >= DEADLINE => {
                return Err(e.context(format!("waited {DEADLINE:?} for {what}")));
            }
            Err(_) => {}
        }
        alive().with_context(|| format!("waiting for {what}"))?;
        std::thread::sleep(POLL_EVERY);
    }
}

/// The lines of an operator log that show a request the API server refused
/// for want of permission: `forbidden` in any case, or `403` standing alone
/// (not inside a longer number or name).
pub fn refused_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| line.to_ascii_lowercase().contains("forbidden") || has_status_403(line))
        .collect()
}

fn has_status_403(line: &str) -> bool {
    let bytes = line.as_bytes();
    line.match_indices("403").any(|(at, _)| {
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let after = bytes.get(at + 3).copied();
        !before.is_some_and(|b| b.is_ascii_alphanumeric())
            && !after.is_some_and(|b| b.is_ascii_alphanumeric())
    })
}

/// `ringway-operator` beside this package's binaries in the same target
/// directory, unless `RINGWAY_OPERATOR_BIN` says otherwise.
pub fn operator_binary() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("RINGWAY_OPERATOR_BIN") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_BIN_EXE_ringway-echo")).with_file_name("ringway-operator"),
    };
    ensure!(
        path.exists(),
        "{} does not exist: build it first (`cargo build -p ringway-operator`), or set RINGWAY_OPERATOR_BIN",
        path.display()
    );
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::refused_lines;

    #[test]
    fn refused_requests_are_found_in_the_log() {
        let log = "\
2026-01-01T00:00:00Z  INFO controller running namespaces=[\"ns\"]
2026-01-01T00:00:01Z  WARN controller error=ApiError: statefulsets.apps is forbidden: User \"system:serviceaccount:ns:sa\" cannot list resource \"statefulsets\": Forbidden (ErrorResponse { status: \"Failure\", reason: \"Forbidden\", code: 403 })
2026-01-01T00:00:02Z DEBUG reconcile done gateway=ns/echo resource_version=14030 uid=4038-a403
2026-01-01T00:00:03Z  WARN leader election error=status 403
2026-01-01T00:00:04Z  WARN FORBIDDEN by policy
";
        let lines = refused_lines(log);
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(lines[0].contains("statefulsets.apps is forbidden"));
        assert!(lines[1].ends_with("status 403"));
        assert!(lines[2].contains("FORBIDDEN"));
    }

    #[test]
    fn a_clean_log_has_no_refusals() {
        assert!(refused_lines("INFO ok port=4030\nDEBUG id=x403y\n").is_empty());
    }
}

//! Shared helpers of the integration tests: start the emulator (as the `berth emulate` process, or in-process on
//! 127.0.0.1:0) and drive kubectl against it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// A running `berth emulate` process; killed on drop.
pub struct EmulatorProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// The kubeconfig it wrote.
    pub kubeconfig: PathBuf,
    // Kept open so that later output of the process never hits a closed pipe.
    _stdout: BufReader<std::process::ChildStdout>,
    _dir: tempfile::TempDir,
}

impl Drop for EmulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `berth emulate --listen 127.0.0.1:0` and waits until it has written its kubeconfig.
pub fn start_emulator() -> EmulatorProcess {
    start_emulator_with(&[])
}

/// Starts `berth emulate --listen 127.0.0.1:0` with `extra` arguments (e.g. `--binder`) and waits until it has
/// written its kubeconfig.
pub fn start_emulator_with(extra: &[&str]) -> EmulatorProcess {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["emulate", "--listen", "127.0.0.1:0"])
        .args(extra)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn berth emulate");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    let mut reader = BufReader::new(stdout);
    reader
        .read_line(&mut line)
        .expect("read the listening line");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .map(|w| w.trim_end_matches(';').to_string())
        .unwrap_or_else(|| panic!("unexpected first line of berth emulate: {line:?}"));
    EmulatorProcess {
        child,
        url,
        kubeconfig,
        _stdout: reader,
        _dir: dir,
    }
}

/// An emulator served in-process on 127.0.0.1:0, with a kubeconfig file for it.
pub struct InProcess {
    /// The emulator (for direct access: compact, drop_watches, store).
    pub emulator: berth::emulator::Emulator,
    /// The socket server.
    pub server: berth::emulator::server::RunningServer,
    /// A kubeconfig pointing at it.
    pub kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

/// Starts the emulator in this process on 127.0.0.1:0 (call inside a tokio runtime); returns the address and a
/// kubeconfig path.
pub async fn start_in_process() -> InProcess {
    let emulator = berth::emulator::Emulator::new();
    let server =
        berth::emulator::server::serve(emulator.clone(), "127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        berth::emulator::server::kubeconfig_yaml(&server.url()),
    )
    .expect("write kubeconfig");
    InProcess {
        emulator,
        server,
        kubeconfig,
        _dir: dir,
    }
}

/// Whether a missing tool fails the test instead of skipping it: scripts/test.sh (and so CI) installs every tool
/// and sets this, so a test there can never pass by not running.
pub fn tools_required() -> bool {
    std::env::var("BERTH_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

/// True when kubectl is on PATH; prints why a test is skipped otherwise (or fails it, under `tools_required`).
pub fn kubectl_available(test: &str) -> bool {
    let ok = Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            !tools_required(),
            "{test}: kubectl is not on PATH, and BERTH_REQUIRE_TOOLS=1"
        );
        eprintln!("SKIPPED {test}: kubectl is not on PATH");
    }
    ok
}

/// Runs kubectl against a kubeconfig, optionally with stdin.
pub fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().expect("spawn kubectl");
    if let Some(input) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("kubectl output")
}

/// Runs kubectl and returns stdout, failing the test with stderr when it fails.
pub fn kubectl_ok(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl(kubeconfig, args, stdin);
    assert!(
        out.status.success(),
        "kubectl {} failed:\nstdout: {}\nstderr: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs kubectl expecting failure; returns stderr.
pub fn kubectl_err(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl(kubeconfig, args, stdin);
    assert!(
        !out.status.success(),
        "kubectl {} unexpectedly succeeded: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Path of a fixture file.
pub fn fixture(name: &str) -> String {
    format!(
        "{}/tests/fixtures/emulator/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

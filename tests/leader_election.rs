//! Two `berth run --leader-elect` replicas against `berth emulate`: exactly one leads; when the leader is killed
//! the standby takes over within 15 s; a leader stopped with SIGTERM releases the Lease so the standby takes over
//! at once. Leadership is read from each replica's /metrics (berth_leader) and from the Lease itself.

mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

struct Replica {
    child: Child,
    metrics: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(kubeconfig: &std::path::Path, identity: &str) -> Replica {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "run",
            "--leader-elect",
            "--namespace",
            "berth-system",
            "--identity",
            identity,
        ])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg(format!("--metrics-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("berth run starts");
    Replica {
        child,
        metrics: format!("127.0.0.1:{port}"),
    }
}

/// berth_leader from a replica's /metrics, None while it does not answer.
fn leading(replica: &Replica) -> Option<bool> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(&replica.metrics).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    body.lines()
        .find(|l| l.starts_with("berth_leader "))
        .map(|l| l.ends_with(" 1"))
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> (T, Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(v) = f() {
            return (v, start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

fn lease_holder(kc: &std::path::Path) -> String {
    kubectl_ok(
        kc,
        &[
            "-n",
            "berth-system",
            "get",
            "lease",
            "berth-leader",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        None,
    )
}

#[test]
fn one_leader_and_fast_takeover() {
    if !kubectl_available("one_leader_and_fast_takeover") {
        return;
    }
    let emu = start_emulator();
    let kc = emu.kubeconfig.clone();
    let crds = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("crds")
        .output()
        .unwrap()
        .stdout;
    kubectl_ok(
        &kc,
        &["apply", "-f", "-"],
        Some(&String::from_utf8(crds).unwrap()),
    );
    kubectl_ok(
        &kc,
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: Namespace\nmetadata: {name: berth-system}\n"),
    );

    let mut a = start(&kc, "replica-a");
    let b = start(&kc, "replica-b");
    let (first, _) = wait_for("a leader", Duration::from_secs(20), || {
        match (leading(&a), leading(&b)) {
            (Some(true), Some(false)) => Some("replica-a"),
            (Some(false), Some(true)) => Some("replica-b"),
            _ => None,
        }
    });
    assert_eq!(lease_holder(&kc), first);
    // Exactly one leads, over several renewals.
    for _ in 0..10 {
        let (la, lb) = (leading(&a), leading(&b));
        assert!(
            !(la == Some(true) && lb == Some(true)),
            "two leaders at once"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // Kill the leader without a chance to release: the standby takes over within 15 s.
    let (mut leader, standby) = if first == "replica-a" { (a, b) } else { (b, a) };
    let _ = leader.child.kill();
    let _ = leader.child.wait();
    let (_, took) = wait_for("the standby to lead", Duration::from_secs(20), || {
        leading(&standby).filter(|l| *l)
    });
    assert!(took <= Duration::from_secs(15), "takeover took {took:?}");
    let second = lease_holder(&kc);
    assert_ne!(second, first);

    // SIGTERM: the leader releases the Lease, and a new replica takes over at once.
    a = start(&kc, "replica-c");
    wait_for("replica-c standing by", Duration::from_secs(10), || {
        leading(&a).filter(|l| !*l)
    });
    let pid = standby.child.id().to_string();
    let started = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    wait_for("replica-c to lead", Duration::from_secs(10), || {
        leading(&a).filter(|l| *l)
    });
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "a released lease is taken at the next retry, took {:?}",
        started.elapsed()
    );
    drop(standby);
}

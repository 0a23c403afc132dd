//! moto_server for the EC2 and Auto Scaling integration tests: BERTH_MOTO_ENDPOINT if set, else one server per test
//! process started from .venv/bin/moto_server (install it with `scripts/moto.sh install`). No moto is a failure, not
//! a skip: CI must run these tests.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Server {
    endpoint: String,
    // Held so the wrapper's stdin stays open; when the test process exits, the wrapper stops moto.
    _child: Option<Child>,
}

static SERVER: OnceLock<Server> = OnceLock::new();

fn answers(endpoint: &str) -> bool {
    let addr = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let Ok(mut s) = TcpStream::connect_timeout(
        &addr
            .parse()
            .expect("BERTH_MOTO_ENDPOINT must be http://HOST:PORT"),
        Duration::from_millis(300),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(
        format!("GET /moto-api/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.")
}

/// The endpoint of a running moto_server (`http://127.0.0.1:PORT`).
pub fn endpoint() -> String {
    let server = SERVER.get_or_init(|| {
        // Dummy credentials for the default chain; moto accepts any.
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        if let Ok(e) = std::env::var("BERTH_MOTO_ENDPOINT") {
            assert!(answers(&e), "BERTH_MOTO_ENDPOINT={e} does not answer");
            return Server { endpoint: e, _child: None };
        }
        let bin = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/moto_server");
        assert!(
            std::path::Path::new(bin).exists(),
            "moto is needed for these tests: run `scripts/moto.sh install` (creates .venv with moto[server]) or set BERTH_MOTO_ENDPOINT"
        );
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // The wrapper stops moto when its stdin closes, i.e. when this test process ends.
        let child = Command::new("sh")
            .arg("-c")
            .arg(r#""$0" -H 127.0.0.1 -p "$1" >/dev/null 2>&1 & m=$!; cat >/dev/null; kill $m"#)
            .arg(bin)
            .arg(port.to_string())
            .env("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true")
            .env("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
            .stdin(Stdio::piped())
            .spawn()
            .expect("starting moto_server");
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !answers(&endpoint) {
            assert!(Instant::now() < deadline, "moto_server did not answer on {endpoint} within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Server { endpoint, _child: Some(child) }
    });
    server.endpoint.clone()
}

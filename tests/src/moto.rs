//! The AWS emulator: moto's server mode (PyPI `moto[server]`), one process
//! speaking the real DynamoDB and EC2 wire protocols on loopback. Uses the
//! server named by `RA_MOTO_ENDPOINT` if the test script started one, else
//! starts `moto_server` from `RA_MOTO_SERVER` or the workspace's `.venv`.

use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

pub struct Moto {
    _child: Option<Child>,
    pub endpoint: String,
}

fn moto_server_path() -> PathBuf {
    if let Some(p) = std::env::var_os("RA_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server")
}

impl Moto {
    /// A server already running at `endpoint` (not stopped by this value).
    pub fn at(endpoint: &str) -> Moto {
        Moto {
            _child: None,
            endpoint: endpoint.to_owned(),
        }
    }

    pub async fn start() -> Moto {
        if let Ok(endpoint) = std::env::var("RA_MOTO_ENDPOINT") {
            return Moto {
                _child: None,
                endpoint,
            };
        }
        let server = moto_server_path();
        assert!(
            server.exists(),
            "{} not found: run scripts/test (it creates the venv with moto[server])",
            server.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting moto_server");
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "moto_server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Moto {
            _child: Some(child),
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }
}

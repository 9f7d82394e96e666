//! Starts a real Redis (Debian's `redis-server`) on an ephemeral loopback port, without
//! persistence, for tests of global rate limiting. `cargo xtask test` installs it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A running `redis-server`; killed on drop. `stop` / `start` keep its port.
pub struct Redis {
    child: Option<Child>,
    pub addr: SocketAddr,
}

/// Whether `redis-server` can be run here.
pub fn redis_available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

impl Redis {
    /// Starts Redis on a free loopback port.
    pub fn start() -> Result<Redis> {
        for _ in 0..5 {
            // Redis has no "port 0": take a free port from the kernel, then hand it over.
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let mut redis = Redis {
                child: None,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
            };
            if redis.spawn().is_ok() {
                return Ok(redis);
            }
        }
        bail!("redis-server did not start on any of 5 free ports")
    }

    fn spawn(&mut self) -> Result<()> {
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &self.addr.port().to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning redis-server (apt-get install redis-server)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                let mut out = String::new();
                if let Some(mut stdout) = child.stdout.take() {
                    let _ = stdout.read_to_string(&mut out);
                }
                bail!("redis-server exited ({status}): {out}");
            }
            if self.ping().is_ok() {
                // Drain its log so a full pipe never blocks it.
                if let Some(stdout) = child.stdout.take() {
                    std::thread::spawn(move || for _ in BufReader::new(stdout).lines() {});
                }
                self.child = Some(child);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        bail!("redis-server did not answer PING within 10 s")
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Sends one inline command and returns the first line of the reply.
    pub fn command(&self, command: &str) -> Result<String> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(format!("{command}\r\n").as_bytes())?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line)?;
        Ok(line.trim_end().to_string())
    }

    pub fn ping(&self) -> Result<()> {
        match self.command("PING")?.as_str() {
            "+PONG" => Ok(()),
            other => bail!("PING answered {other:?}"),
        }
    }

    /// Stops the process (connections are then refused); its data is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty).
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

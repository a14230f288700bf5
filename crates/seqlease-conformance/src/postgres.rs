//! A PostgreSQL server for tests: `DATABASE_URL` when set, otherwise a throwaway cluster.
//!
//! PostgreSQL tests run against a real server, never a mock. [`database_url`] returns
//! `DATABASE_URL` if the environment sets it. Otherwise the first call starts a private
//! cluster from the installed PostgreSQL binaries (found under `PG_BIN`,
//! `/usr/lib/postgresql/<version>/bin`, `/usr/pgsql-<version>/bin`, or `PATH`), shared by
//! every test of the test binary:
//!
//! - `initdb` into a fresh temporary directory (as the `postgres` user when running as
//!   root, because PostgreSQL refuses to run as root), with `fsync` on;
//! - `pg_ctl start` on a free port of 127.0.0.1, its socket in the same directory, so it
//!   never touches the machine's own cluster;
//! - `pg_hba.conf` trusts local connections, except for the role [`PASSWORD_ROLE`], which
//!   must log in with a password (tests of wrong credentials use it);
//! - TLS on (`ssl=on` with a self-signed certificate made by `openssl`, when it is
//!   installed), so tests can connect with `sslmode=require`;
//! - a detached watchdog stops the cluster (`pg_ctl stop -m immediate`) and removes the
//!   directory as soon as the test process exits, however it exits.
//!
//! [`Cluster`] is that cluster on its own, for a harness that must restart or stop the server
//! it tests against (the fault-injection harness, `seqlease-chaos`): [`Cluster::start`],
//! [`Cluster::restart`] (`pg_ctl restart -m fast | immediate`), [`Cluster::stop`].
//!
//! On a machine without PostgreSQL binaries the first call panics with what to install
//! (`apt-get install -y postgresql`). This module only spawns processes and builds URLs: it
//! needs no database driver.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The role of the throwaway cluster that must authenticate with a password (scram).
pub const PASSWORD_ROLE: &str = "seqlease_pw";

/// A running throwaway cluster (or the server named by `DATABASE_URL`).
#[derive(Debug)]
pub struct Server {
    /// `postgres://…` of a superuser connection to the `postgres` database.
    pub url: String,
    /// Host and port, for building other URLs.
    pub host: String,
    /// The port.
    pub port: u16,
    /// Whether this is a throwaway cluster started here (and [`PASSWORD_ROLE`] must use a
    /// password), rather than `DATABASE_URL`.
    pub throwaway: bool,
    /// Whether the throwaway cluster accepts TLS connections.
    pub tls: bool,
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// The URL of the test server: `DATABASE_URL`, or a throwaway cluster started on first use.
pub fn database_url() -> String {
    server().url.clone()
}

/// The test server (see the module docs).
pub fn server() -> &'static Server {
    SERVER.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => {
            let (host, port) = host_port(&url);
            Server {
                url,
                host,
                port,
                throwaway: false,
                tls: false,
            }
        }
        _ => start_cluster().unwrap_or_else(|e| panic!("{e}")),
    })
}

/// A name unique to this process and call: for schemas and databases of fixtures.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{n}_{}", std::process::id(), nanos % 100_000)
}

fn host_port(url: &str) -> (String, u16) {
    let rest = url.split("://").nth(1).unwrap_or("");
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    let hostport = rest.split(['/', '?']).next().unwrap_or("");
    match hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap_or(5432)),
        None => (hostport.to_string(), 5432),
    }
}

/// Where the PostgreSQL server binaries are.
pub fn find_bin_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BIN") {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = Vec::new();
    for (root, prefix) in [("/usr/lib/postgresql", ""), ("/usr", "pgsql-")] {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(version) = name.strip_prefix(prefix) else {
                continue;
            };
            let major = version
                .split('.')
                .next()
                .and_then(|v| v.parse::<u32>().ok());
            let bin = entry.path().join("bin");
            if let Some(major) = major
                && bin.join("initdb").exists()
                && bin.join("pg_ctl").exists()
            {
                candidates.push((major, bin));
            }
        }
    }
    candidates.sort();
    if let Some((_, bin)) = candidates.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command that runs `program` as the cluster's owner (the `postgres` user when root).
fn as_owner(program: &Path, root: bool) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn start_cluster() -> Result<Server, String> {
    Cluster::start().map(|cluster| cluster.server())
}

/// How [`Cluster::restart`] stops the server before starting it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// `-m fast`: sessions are terminated, the server shuts down cleanly (a checkpoint).
    Fast,
    /// `-m immediate`: the server stops at once, as in a crash; it runs crash recovery
    /// from the WAL when it starts again.
    Immediate,
}

impl StopMode {
    fn arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// A throwaway cluster this process started: its own data directory under the system's
/// temporary directory, a free port of 127.0.0.1, and a detached watchdog that stops it and
/// removes the directory once this process exits. The shared test server of [`server`] is
/// one of these; a fault-injection harness starts its own so that it may restart it
/// ([`Cluster::restart`]) without disturbing anyone else's server.
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    root: bool,
    port: u16,
    tls: bool,
}

impl Cluster {
    /// `initdb` and start a fresh cluster (see the module docs for its settings). Fails
    /// with what to install when the PostgreSQL server binaries are missing.
    pub fn start() -> Result<Cluster, String> {
        let bin = find_bin_dir().ok_or(
            "PostgreSQL server binaries (initdb, pg_ctl) not found under PG_BIN, /usr/lib/postgresql/*/bin or PATH: \
             install them (Debian/Ubuntu: apt-get install -y postgresql) or set DATABASE_URL to a server for the tests",
        )?;
        let root = is_root();
        let dir = std::env::temp_dir().join(unique_name("seqlease-pg"));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        if root {
            let status = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(&dir)
                .status()
                .map_err(|e| format!("chown: {e}"))?;
            if !status.success() {
                return Err(format!(
                    "running as root, but cannot give {} to the postgres user (does it exist?)",
                    dir.display()
                ));
            }
        }
        // The watchdog first, so the directory goes away even if a later step fails.
        spawn_watchdog(&bin, &dir, root);
        let data = dir.join("data");
        let out = as_owner(&bin.join("initdb"), root)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("initdb could not run: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let hba = format!(
            "local all all trust\n\
             host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n\
             host all all 127.0.0.1/32 trust\n"
        );
        std::fs::write(data.join("pg_hba.conf"), hba).map_err(|e| format!("pg_hba.conf: {e}"))?;
        let tls = make_certificate(&data, root);
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let opts = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=on \
                 -c shared_buffers=128MB -c password_encryption=scram-sha-256 -c ssl={}",
                dir.display(),
                if tls { "on" } else { "off" }
            );
            let cluster = Cluster {
                bin: bin.clone(),
                dir: dir.clone(),
                root,
                port,
                tls,
            };
            let out = cluster
                .pg_ctl()
                .arg("-l")
                .arg(dir.join("server.log"))
                .args(["-o", &opts, "-w", "-t", "60", "start"])
                .output()
                .map_err(|e| format!("pg_ctl could not run: {e}"))?;
            if out.status.success() && wait_ready(port) {
                return Ok(cluster);
            }
            last_error = format!(
                "{}{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
            );
        }
        Err(format!(
            "the throwaway PostgreSQL cluster did not start: {last_error}"
        ))
    }

    /// `pg_ctl -D <data>` as the cluster's owner.
    fn pg_ctl(&self) -> Command {
        let mut c = as_owner(&self.bin.join("pg_ctl"), self.root);
        c.arg("-D").arg(self.dir.join("data")).stdin(Stdio::null());
        c
    }

    /// `postgres://…` of a superuser connection to the `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stop the server (every session is cut) and start it again on the same port with the
    /// same settings (`pg_ctl restart`, which reuses the options of the last start). Returns
    /// once it accepts connections again.
    pub fn restart(&self, mode: StopMode) -> Result<(), String> {
        let out = self
            .pg_ctl()
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-m", mode.arg(), "-w", "-t", "60", "restart"])
            .output()
            .map_err(|e| format!("pg_ctl could not run: {e}"))?;
        if out.status.success() && wait_ready(self.port) {
            return Ok(());
        }
        Err(format!(
            "pg_ctl restart -m {} failed: {}{}",
            mode.arg(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    /// Stop the server now (`-m immediate`); the watchdog removes the directory when this
    /// process exits.
    pub fn stop(&self) {
        let _ = self
            .pg_ctl()
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    fn server(self) -> Server {
        Server {
            url: self.url(),
            host: "127.0.0.1".into(),
            port: self.port,
            throwaway: true,
            tls: self.tls,
        }
    }
}

/// A self-signed certificate for the cluster (`server.crt`/`server.key` in the data
/// directory); `false` when `openssl` is missing or fails, and the cluster runs without TLS.
fn make_certificate(data: &Path, root: bool) -> bool {
    let ok = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-x509",
            "-days",
            "2",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(data.join("server.key"))
        .arg("-out")
        .arg(data.join("server.crt"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        return false;
    }
    let key = data.join("server.key");
    let mut ok = Command::new("chmod")
        .arg("600")
        .arg(&key)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if root {
        ok &= Command::new("chown")
            .arg("postgres:")
            .arg(&key)
            .arg(data.join("server.crt"))
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    }
    ok
}

fn wait_ready(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Stop the cluster and remove its directory once this process is gone.
fn spawn_watchdog(bin: &Path, dir: &Path, root: bool) {
    let pg_ctl = bin.join("pg_ctl");
    let stop = if root {
        format!(
            "runuser -u postgres -- '{}' -D '{}/data' stop -m immediate",
            pg_ctl.display(),
            dir.display()
        )
    } else {
        format!(
            "'{}' -D '{}/data' stop -m immediate",
            pg_ctl.display(),
            dir.display()
        )
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf '{dir}'",
        pid = std::process::id(),
        dir = dir.display()
    );
    let _ = Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .or_else(|_| {
            Command::new("sh")
                .args(["-c", &script])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_and_port() {
        assert_eq!(
            host_port("postgres://u:p@127.0.0.1:5433/db"),
            ("127.0.0.1".to_string(), 5433)
        );
        assert_eq!(
            host_port("postgres://u@db.internal/db?sslmode=require"),
            ("db.internal".to_string(), 5432)
        );
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique_name("t"), unique_name("t"));
    }
}

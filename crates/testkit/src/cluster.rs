//! A PostgreSQL cluster of a test's own, for tests that crash, freeze and restart the server:
//! never the shared one from `TEST_DATABASE_URL`, which every other test is using.
//!
//! It is made with Debian's `initdb` in a temporary directory (the binaries come from
//! `POSTGRES_BIN`, or the newest `/usr/lib/postgresql/*/bin`; `scripts/test` installs them),
//! listens on a loopback port that stays the same across restarts, and is stopped and removed
//! on drop. Run as root, the server runs as the `postgres` user, since PostgreSQL refuses root.

use std::path::PathBuf;
use std::process::{Command, Output};

use tempfile::TempDir;

/// The variable naming the directory of PostgreSQL's server binaries.
pub const BIN_VARIABLE: &str = "POSTGRES_BIN";

/// The directory holding `initdb`, `pg_ctl` and `postgres`.
///
/// # Panics
/// When there is none: run the tests with `scripts/test`, which installs PostgreSQL.
pub fn server_binaries() -> PathBuf {
    if let Some(dir) = std::env::var_os(BIN_VARIABLE) {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries under /usr/lib/postgresql (set {BIN_VARIABLE}, or \
             run scripts/test, which installs Debian's postgresql package)"
        )
    })
}

/// A running (or stopped) cluster of one test's own.
#[derive(Debug)]
pub struct Cluster {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Cluster {
    /// Creates a cluster (durability settings off: it lives for one test) and starts it.
    ///
    /// # Panics
    /// When the cluster cannot be made or started; the message holds the server's log.
    pub fn start() -> Self {
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("soul-cluster-")
            .tempdir()
            .unwrap_or_else(|error| panic!("a directory for the cluster: {error}"));
        let cluster = Cluster {
            bin: server_binaries(),
            port: free_port(),
            as_postgres,
            dir,
        };
        if as_postgres {
            cluster.checked(
                Command::new("chown")
                    .arg("postgres:")
                    .arg(cluster.dir.path()),
            );
        }
        let data = cluster.data_dir();
        cluster.checked(cluster.tool("initdb").arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        ]));
        cluster.resume();
        cluster
    }

    /// Connection URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// Stops the server at once, as a crash or a power cut would (`pg_ctl stop -m immediate`):
    /// connections are cut and nothing is flushed; the next start recovers from the WAL.
    pub fn kill(&self) {
        self.checked(self.tool("pg_ctl").arg("-D").arg(self.data_dir()).args([
            "-m",
            "immediate",
            "-w",
            "stop",
        ]));
    }

    /// Freezes the server and every backend (SIGSTOP), as a hung host or a network partition
    /// would: connections stay open and new ones are accepted by the kernel, but nothing answers.
    pub fn freeze(&self) {
        self.signal_all("-STOP");
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal_all("-CONT");
    }

    fn signal_all(&self, signal: &str) {
        let pid = self
            .server_pid()
            .unwrap_or_else(|| panic!("no server pid in {}", self.data_dir().display()));
        // The postmaster first, so that it forks no backend that would be missed.
        self.checked(&mut signal_command(signal, &pid));
        for child in children(&pid) {
            // A backend may have exited since it was listed: nothing to signal then.
            let _ = signal_command(signal, &child).output();
        }
    }

    fn server_pid(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next().map(str::to_owned)
    }

    /// Starts the stopped server again, on the same port.
    pub fn resume(&self) {
        let options = format!(
            "-h 127.0.0.1 -p {} -k {} -c fsync=off -c full_page_writes=off",
            self.port,
            self.dir.path().display()
        );
        let result = self
            .tool("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_file())
            .args(["-w", "-s", "start", "-o", &options])
            .output();
        match result {
            Ok(output) if output.status.success() => {}
            other => panic!(
                "starting the test cluster failed: {}\n{}",
                describe(&other),
                std::fs::read_to_string(self.log_file()).unwrap_or_default()
            ),
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// `name` from the server binaries, run as the `postgres` user when this process is root.
    fn tool(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn checked(&self, command: &mut Command) {
        let result = command.output();
        if !matches!(&result, Ok(output) if output.status.success()) {
            panic!("{command:?} failed: {}", describe(&result));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A frozen server (a test failed before thawing it) could not act on the stop.
        if let Some(pid) = self.server_pid() {
            for pid in std::iter::once(pid.clone()).chain(children(&pid)) {
                let _ = signal_command("-CONT", &pid).output();
            }
        }
        // Stopped already, or stopping now: either way nothing is left running.
        let _ = self
            .tool("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn describe(result: &std::io::Result<Output>) -> String {
    match result {
        Ok(output) => format!(
            "{}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => error.to_string(),
    }
}

/// `kill` as the shell's builtin: Debian's `/bin/kill` comes with procps, which a minimal
/// machine may lack.
fn signal_command(signal: &str, pid: &str) -> Command {
    let mut command = Command::new("sh");
    command.args(["-c", "kill \"$0\" \"$1\"", signal, pid]);
    command
}

/// The processes whose parent is `pid`, from `/proc`.
fn children(pid: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid …`, where comm may hold spaces and parentheses.
            let after_comm = &stat[stat.rfind(')')? + 1..];
            let parent = after_comm.split_whitespace().nth(1)?;
            (parent == pid).then(|| entry.file_name().to_string_lossy().into_owned())
        })
        .collect()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap_or_else(|error| panic!("a free loopback port: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_stops_resumes_and_cleans_up() {
        let cluster = Cluster::start();
        let dir = cluster.dir.path().to_owned();
        assert!(dir.join("data").join("PG_VERSION").is_file());
        let port = cluster.port;
        let reachable = || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        assert!(reachable());
        cluster.freeze();
        let mut frozen = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        frozen
            .set_read_timeout(Some(std::time::Duration::from_millis(300)))
            .unwrap();
        // A startup message for protocol 3.0: a live server answers at once.
        let startup = [0, 0, 0, 8, 0, 3, 0, 0];
        std::io::Write::write_all(&mut frozen, &startup).unwrap();
        let mut answer = [0_u8; 1];
        assert!(
            std::io::Read::read(&mut frozen, &mut answer).is_err(),
            "frozen"
        );
        cluster.thaw();
        cluster.kill();
        assert!(!reachable());
        cluster.resume();
        assert!(reachable());
        drop(cluster);
        assert!(!reachable());
        assert!(!dir.exists());
    }
}

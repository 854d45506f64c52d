//! A private PostgreSQL server started from the system's binaries, so that
//! the service (and its tests) run with nothing but cargo and a PostgreSQL
//! package installed.
//!
//! The server listens on 127.0.0.1 only, on a free port chosen at each start,
//! with password authentication; the password is generated at `initdb` and
//! kept in the data directory. PostgreSQL refuses to run as root, so when
//! the service is root it runs the server as the `postgres` user (or
//! `nobody`) and hands it the data directory.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nix::fcntl::{Flock, FlockArg};
use nix::unistd::{Uid, User, chown};

/// File in the data directory that holds the superuser password.
const PASSWORD_FILE: &str = "customer-service.password";
/// Where Debian and Ubuntu install the server binaries, one folder a version.
const DEBIAN_PREFIX: &str = "/usr/lib/postgresql";

/// Why the embedded server could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) were found neither on PATH nor in \
         {DEBIAN_PREFIX}/*/bin. Install them (Debian/Ubuntu: `apt-get install -y postgresql`), \
         point POSTGRES_BIN_DIR at them, or set DATABASE_URL to use an existing server"
    )]
    BinariesNotFound,
    #[error(
        "running as root, but neither a `postgres` nor a `nobody` user exists to run PostgreSQL as"
    )]
    NoUnprivilegedUser,
    #[error(
        "another customer-service uses the data directory {0} (its lock file {0}.lock is held); \
         stop it, or give this one another DATA_DIR"
    )]
    InUse(String),
    #[error("{command} failed: {detail}")]
    Command { command: String, detail: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> EmbeddedError {
    let context = context.into();
    move |source| EmbeddedError::Io { context, source }
}

/// A running embedded server. Stop it with [`EmbeddedPostgres::stop`]; it
/// is not stopped on drop, because stopping blocks.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    run_as: Option<User>,
    port: u16,
    url: String,
    /// Held for as long as this process owns the data directory; the
    /// kernel releases it when the process ends, however it ends.
    _lock: Option<Flock<std::fs::File>>,
}

impl EmbeddedPostgres {
    /// Initialises `data_dir` if it holds no cluster yet, then starts the
    /// server on a free loopback port and waits until it accepts connections.
    /// A server left running on `data_dir` by an earlier process is stopped
    /// first, so that this process owns the one it talks to.
    pub fn start(data_dir: &Path, bin_dir: Option<&Path>) -> Result<Self, EmbeddedError> {
        let bin_dir = match bin_dir {
            Some(dir) => dir.to_owned(),
            None => find_binaries().ok_or(EmbeddedError::BinariesNotFound)?,
        };
        let run_as = unprivileged_user()?;
        let lock = lock_data_dir(data_dir)?;
        let port = free_port()?;
        let server = EmbeddedPostgres {
            bin_dir,
            data_dir: data_dir.to_owned(),
            run_as,
            port,
            url: String::new(),
            _lock: Some(lock),
        };

        if !data_dir.join("PG_VERSION").exists() {
            server.init()?;
        }
        if server
            .pg_ctl(&["status"])
            .map(|o| o.status.success())
            .unwrap_or(false)
        {
            tracing::warn!(data_dir = %data_dir.display(), "stopping a PostgreSQL left running by an earlier process");
            server.stop_server()?;
        }

        server.launch()?;

        let password_path = data_dir.join(PASSWORD_FILE);
        let password = std::fs::read_to_string(&password_path)
            .map_err(io_error(format!("reading {}", password_path.display())))?;
        let url = format!(
            "postgres://postgres:{}@127.0.0.1:{port}/postgres",
            password.trim()
        );
        tracing::info!(port, data_dir = %data_dir.display(), "embedded PostgreSQL started");
        Ok(EmbeddedPostgres { url, ..server })
    }

    /// Starts the server again after [`EmbeddedPostgres::stop_immediately`],
    /// on the same port, so that existing pools reconnect by themselves.
    pub fn restart(&self) -> Result<(), EmbeddedError> {
        self.launch()
    }

    /// Stops the server the way a crash would (immediate mode: no
    /// checkpoint, open connections cut). For failure tests.
    pub fn stop_immediately(&self) -> Result<(), EmbeddedError> {
        let output = self.pg_ctl(&["stop", "--wait", "--mode=immediate"])?;
        check(&output, "pg_ctl stop")
    }

    fn launch(&self) -> Result<(), EmbeddedError> {
        let log_file = self.data_dir.join("server.log");
        let output = self.pg_ctl(&[
            "start",
            "--wait",
            "--timeout=60",
            "--log",
            &log_file.to_string_lossy(),
            "-o",
            &format!("-p {}", self.port),
        ])?;
        check(&output, "pg_ctl start")
    }

    /// The URL of a server that is already running on `data_dir` (started by
    /// a running service), so that a command-line tool can use it without
    /// taking it over. `None` when nothing runs there.
    pub fn running_url(data_dir: &Path) -> Option<String> {
        let pid_file = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
        let mut lines = pid_file.lines();
        let pid = lines.next()?.trim();
        let port: u16 = lines.nth(2)?.trim().parse().ok()?;
        if !Path::new("/proc").join(pid).exists() {
            return None;
        }
        let password = std::fs::read_to_string(data_dir.join(PASSWORD_FILE)).ok()?;
        Some(format!(
            "postgres://postgres:{}@127.0.0.1:{port}/postgres",
            password.trim()
        ))
    }

    /// The connection URL, password included: never log it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Stops the server, waiting for it to finish (fast mode: open sessions
    /// are rolled back, committed data is flushed).
    pub fn stop(self) -> Result<(), EmbeddedError> {
        self.stop_server()?;
        tracing::info!(data_dir = %self.data_dir.display(), "embedded PostgreSQL stopped");
        Ok(())
    }

    fn stop_server(&self) -> Result<(), EmbeddedError> {
        if !self.is_running() {
            return Ok(());
        }
        let output = self.pg_ctl(&["stop", "--wait", "--mode=fast"])?;
        check(&output, "pg_ctl stop")
    }

    /// Whether the server on the data directory is running.
    pub fn is_running(&self) -> bool {
        self.pg_ctl(&["status"])
            .is_ok_and(|output| output.status.success())
    }

    /// Creates the cluster: UTF-8, password authentication for every
    /// connection, listening on loopback TCP only.
    fn init(&self) -> Result<(), EmbeddedError> {
        // Built beside the data directory and renamed into place once
        // complete, so that an interrupted first start leaves nothing that
        // looks like a cluster.
        let staging = staging_dir(&self.data_dir);
        if staging.exists() {
            std::fs::remove_dir_all(&staging)
                .map_err(io_error(format!("removing {}", staging.display())))?;
        }
        std::fs::create_dir_all(&staging)
            .map_err(io_error(format!("creating {}", staging.display())))?;
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700))
            .map_err(io_error("restricting the data directory"))?;
        self.hand_over(&staging)?;

        let password = format!("{:032x}", rand::random::<u128>());
        let mut password_file =
            tempfile::NamedTempFile::new().map_err(io_error("creating a password file"))?;
        password_file
            .write_all(password.as_bytes())
            .map_err(io_error("writing a password file"))?;
        self.hand_over(password_file.path())?;

        let output = self.run(
            "initdb",
            &[
                "--pgdata",
                &staging.to_string_lossy(),
                "--username=postgres",
                "--auth=scram-sha-256",
                &format!("--pwfile={}", password_file.path().display()),
                "--encoding=UTF8",
                "--no-locale",
            ],
        )?;
        check(&output, "initdb")?;

        let settings = "\n# Written by customer-service: loopback TCP only, no Unix socket.\n\
                        listen_addresses = '127.0.0.1'\nunix_socket_directories = ''\n";
        let conf = staging.join("postgresql.conf");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(io_error(format!("opening {}", conf.display())))?;
        file.write_all(settings.as_bytes())
            .map_err(io_error("writing postgresql.conf"))?;

        let password_path = staging.join(PASSWORD_FILE);
        std::fs::write(&password_path, &password).map_err(io_error("storing the password"))?;
        std::fs::set_permissions(&password_path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_error("restricting the password file"))?;
        if self.data_dir.exists() {
            // An empty directory made beforehand is fine to replace.
            std::fs::remove_dir(&self.data_dir).map_err(io_error(format!(
                "{} exists but holds no cluster",
                self.data_dir.display()
            )))?;
        }
        std::fs::rename(&staging, &self.data_dir).map_err(io_error(format!(
            "moving the new cluster to {}",
            self.data_dir.display()
        )))?;
        tracing::info!(data_dir = %self.data_dir.display(), "initialised a new PostgreSQL cluster");
        Ok(())
    }

    /// Gives `path` to the unprivileged user, when there is one.
    fn hand_over(&self, path: &Path) -> Result<(), EmbeddedError> {
        if let Some(user) = &self.run_as {
            chown(path, Some(user.uid), Some(user.gid)).map_err(|e| {
                io_error(format!("handing {} to {}", path.display(), user.name))(e.into())
            })?;
        }
        Ok(())
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<Output, EmbeddedError> {
        let mut full = vec!["--pgdata", self.data_dir.to_str().unwrap_or_default()];
        full.extend_from_slice(args);
        self.run("pg_ctl", &full)
    }

    /// Runs one of the server's programs, as the unprivileged user if any.
    fn run(&self, program: &str, args: &[&str]) -> Result<Output, EmbeddedError> {
        let mut command = Command::new(self.bin_dir.join(program));
        // A process group of its own: a Ctrl-C in the terminal reaches the
        // service, which then stops PostgreSQL in order, after the last call.
        command
            .args(args)
            .env("LC_ALL", "C")
            .env_remove("PGDATA")
            .process_group(0);
        if let Some(user) = &self.run_as {
            // The child cannot read a root-only working directory.
            command
                .uid(user.uid.as_raw())
                .gid(user.gid.as_raw())
                .current_dir("/");
        }
        command
            .output()
            .map_err(io_error(format!("running {program}")))
    }
}

/// A new temporary directory that the unprivileged user running PostgreSQL
/// can enter, for tests and benchmarks that start a throwaway server in it.
pub fn traversable_temp_dir() -> std::io::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix("customers-pg-").tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

/// `<data_dir>.init`, where a new cluster is built.
fn staging_dir(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.as_os_str().to_owned();
    name.push(".init");
    PathBuf::from(name)
}

/// Takes the exclusive lock `<data_dir>.lock`, creating the parent folders.
/// Two services on one data directory would stop each other's server.
fn lock_data_dir(data_dir: &Path) -> Result<Flock<std::fs::File>, EmbeddedError> {
    if let Some(parent) = data_dir.parent() {
        std::fs::create_dir_all(parent)
            .map_err(io_error(format!("creating {}", parent.display())))?;
    }
    let mut name = data_dir.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error(format!("opening {}", path.display())))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => Ok(locked),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            Err(EmbeddedError::InUse(data_dir.display().to_string()))
        }
        Err((_, errno)) => Err(io_error(format!("locking {}", path.display()))(
            errno.into(),
        )),
    }
}

/// Fails with the program's own words when it exited unsuccessfully.
fn check(output: &Output, command: &str) -> Result<(), EmbeddedError> {
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let detail = if stderr.trim().is_empty() {
        stdout.trim()
    } else {
        stderr.trim()
    }
    .to_owned();
    Err(EmbeddedError::Command {
        command: command.to_owned(),
        detail,
    })
}

/// `initdb` and `pg_ctl` from PATH, else the newest Debian-style install.
fn find_binaries() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    let on_path = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| has_both(dir)));
    if on_path.is_some() {
        return on_path;
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(DEBIAN_PREFIX)
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_both(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// The user to run the server as: none when we are not root.
fn unprivileged_user() -> Result<Option<User>, EmbeddedError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    for name in ["postgres", "nobody"] {
        if let Ok(Some(user)) = User::from_name(name) {
            return Ok(Some(user));
        }
    }
    Err(EmbeddedError::NoUnprivilegedUser)
}

/// A loopback port nobody listens on right now.
fn free_port() -> Result<u16, EmbeddedError> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(io_error("finding a free port"))?;
    let port = listener
        .local_addr()
        .map_err(io_error("finding a free port"))?
        .port();
    Ok(port)
}

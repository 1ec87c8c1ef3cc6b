//! A real PostgreSQL server for the tests, run as the unprivileged
//! `postgres` user from a temporary folder.
//!
//! One server is shared by all tests of the test binary, whatever their
//! area ([`server`], [`fresh_database`]), each test in a database of its
//! own: it listens only on a unix socket in its folder.
//! A test that needs TCP (other hosts, see [`super::netns`]) or that stops
//! and restarts the server starts its own with [`server_on`] or
//! [`Server::start`]; it is stopped when dropped.
//!
//! No server outlives the test process: each postmaster is started from one
//! long-lived launcher thread with a parent-death signal (SIGQUIT, an
//! immediate shutdown) for a test binary that is killed; the shared one is
//! stopped by an `atexit` handler, the others when dropped.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::{LIMIT, probe, wait_until};

/// The OS user that runs every server.
pub const OS_USER: &str = "postgres";
/// The database superuser every server has (`initdb -U`).
pub const ROLE: &str = "mama";
/// The port of every server (its unix socket is `.s.PGSQL.5432`).
pub const PORT: u16 = 5432;

/// The folder of the server's programs (see [`probe::postgres_bin_dir`]).
pub fn bin_dir() -> PathBuf {
    probe::postgres_bin_dir().unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server (initdb and postgres) in $MAMA_TEST_PG_BIN, {}/*/bin or on \
             PATH: install the `postgresql` package (tests/install-tools does) or set \
             MAMA_TEST_PG_BIN",
            probe::DEBIAN_POSTGRESQL
        )
    })
}

/// Where servers keep their folders: `$MAMA_TEST_PG_TMP`, else /dev/shm if
/// it is a tmpfs with a GiB free (on a disk, even with fsync off, each
/// `CREATE DATABASE` took ~300 ms here against ~20 ms in memory), else the
/// usual temporary folder.
pub fn temp_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("MAMA_TEST_PG_TMP") {
        return PathBuf::from(dir);
    }
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let shm = c"/dev/shm";
    // SAFETY: plain system calls with a valid path and zeroed out-buffers.
    let roomy_tmpfs = unsafe {
        let mut fs: libc::statfs = std::mem::zeroed();
        libc::statfs(shm.as_ptr(), &mut fs) == 0
            && fs.f_type as i64 == TMPFS_MAGIC
            && (fs.f_bavail as u64).saturating_mul(fs.f_bsize as u64) >= 1 << 30
            && libc::access(shm.as_ptr(), libc::W_OK) == 0
    };
    if roomy_tmpfs {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    }
}

/// `id FLAG OS_USER` as a number.
fn id_of(flag: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, OS_USER])
        .output()
        .expect("id runs");
    assert!(
        out.status.success(),
        "no user {OS_USER:?} to run PostgreSQL (the postgresql package creates it): {out:?}"
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a numeric id")
}

/// The uid and gid of [`OS_USER`].
pub fn os_user_ids() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| (id_of("-u"), id_of("-g")))
}

/// `setpriv` arguments that run the rest of the command line as
/// [`OS_USER`].
fn as_os_user(cmd: &mut Command) {
    let (uid, gid) = os_user_ids();
    cmd.args(["--reuid", &uid.to_string(), "--regid", &gid.to_string()])
        .args(["--init-groups", "--pdeathsig", "QUIT", "--"]);
}

/// A new folder in `root` for a server: its own, and its socket folder
/// `sock`, both the server user's; others may reach the socket (a test
/// may run mama as another user), the data directory itself stays 0700.
fn server_dir(prefix: &str, root: &Path) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(root)
        .expect("temporary folder");
    let (uid, gid) = os_user_ids();
    let sock = dir.path().join("sock");
    std::fs::create_dir(&sock).expect("socket folder");
    for path in [dir.path(), &sock] {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to the server user");
        set_mode(path, 0o755);
    }
    dir
}

type Job = (Command, Sender<std::io::Result<Child>>);

/// Spawns `cmd` from a thread that lives as long as the process: a
/// parent-death signal fires when the *thread* that forked ends, and test
/// threads end with their test.
fn spawn_from_launcher(cmd: Command) -> std::io::Result<Child> {
    static LAUNCHER: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();
    let launcher = LAUNCHER.get_or_init(|| {
        let (tx, rx) = channel::<Job>();
        std::thread::Builder::new()
            .name("pg-launcher".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("launcher thread");
        Mutex::new(tx)
    });
    let (tx, rx) = channel();
    launcher
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, tx))
        .expect("launcher thread runs");
    rx.recv().expect("launcher answers")
}

/// How to start a [`Server`].
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Addresses to listen on for TCP besides the unix socket (none: no
    /// TCP at all). Each must belong to the network namespace the server
    /// runs in.
    pub listen: Vec<Ipv4Addr>,
    /// Networks (`10.203.0.4/30`) from which any role may connect over
    /// TCP without a password.
    pub trust: Vec<String>,
    /// The network namespace (`ip netns` name) to run the server in; none:
    /// the test's own.
    pub netns: Option<String>,
    /// Roles that must give their password (SCRAM) on the unix socket.
    pub passwords: Vec<String>,
    /// A server as labs run it, for benchmarks: its folder in the usual
    /// temporary folder (a disk) rather than in memory, every commit
    /// synced (the tests' servers skip fsync).
    pub durable: bool,
    /// More server settings (`ssl=on`), each given as `-c SETTING`.
    pub settings: Vec<String>,
    /// `pg_hba.conf` lines put before the others (`hostssl all all
    /// 127.0.0.0/8 trust`).
    pub hba: Vec<String>,
}

/// A PostgreSQL server in a temporary folder (under [`temp_root`]): data
/// directory `data/`,
/// unix socket in `sock/`, log in `server.log`.
pub struct Server {
    dir: tempfile::TempDir,
    options: Options,
    postmaster: Mutex<Option<Child>>,
    databases: AtomicU32,
}

/// A database of its own for one test.
#[derive(Clone, Debug)]
pub struct PgDb {
    /// Its name.
    pub name: String,
    /// `postgresql://mama@/NAME?host=SOCKET_DIR`.
    pub url: String,
    /// The same database over TCP, on the server's first listen address.
    pub tcp_url: Option<String>,
}

impl Server {
    /// Creates a cluster with `initdb` and starts it (see [`Options`]);
    /// panics with the log if it does not come up.
    pub fn start(options: Options) -> Server {
        let dir = server_dir(
            "mama-pg.",
            &if options.durable {
                std::env::temp_dir()
            } else {
                temp_root()
            },
        );
        let server = Server {
            dir,
            options,
            postmaster: Mutex::new(None),
            databases: AtomicU32::new(0),
        };
        server.initdb();
        server.launch();
        server
    }

    /// A hot standby of `primary`, made with `pg_basebackup -R` (it
    /// streams from the primary's unix socket), started on a socket of its
    /// own; returns once it accepts sessions.
    pub fn standby_of(primary: &Server) -> Server {
        let dir = server_dir("mama-pg-standby.", &temp_root());
        let server = Server {
            dir,
            options: Options::default(),
            postmaster: Mutex::new(None),
            databases: AtomicU32::new(0),
        };
        let mut cmd = Command::new("setpriv");
        as_os_user(&mut cmd);
        let out = cmd
            .arg(bin_dir().join("pg_basebackup"))
            .arg("-D")
            .arg(server.data_dir())
            .arg("-R")
            .arg("-h")
            .arg(primary.socket_dir())
            .args([
                "-p",
                &PORT.to_string(),
                "-U",
                ROLE,
                "--no-sync",
                "--checkpoint=fast",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("pg_basebackup starts");
        assert!(
            out.status.success(),
            "pg_basebackup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        server.launch();
        server
    }

    /// The temporary folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir().join("data")
    }

    /// The folder that holds the unix socket (libpq's `host`).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir().join("sock")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir().join("server.log")
    }

    /// What the server (and initdb) logged so far.
    pub fn log(&self) -> String {
        let mut text = std::fs::read_to_string(self.dir().join("initdb.log")).unwrap_or_default();
        text.push_str(&std::fs::read_to_string(self.log_path()).unwrap_or_default());
        text
    }

    /// The addresses it listens on for TCP.
    pub fn listen(&self) -> &[Ipv4Addr] {
        &self.options.listen
    }

    /// The postmaster's PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.lock().as_ref().map(Child::id)
    }

    /// The URL of database `db` over the unix socket.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgresql://{ROLE}@/{db}?host={}&port={PORT}",
            self.socket_dir().display()
        )
    }

    /// The URL of database `db` as `role` over TCP to `addr`.
    pub fn tcp_url_as(&self, role: &str, addr: Ipv4Addr, db: &str) -> String {
        format!("postgresql://{role}@{addr}:{PORT}/{db}?connect_timeout=10")
    }

    /// The URL of database `db` over TCP to the first listen address.
    pub fn tcp_url(&self, db: &str) -> Option<String> {
        let addr = *self.options.listen.first()?;
        Some(self.tcp_url_as(ROLE, addr, db))
    }

    /// A client of database `db` over the unix socket.
    #[track_caller]
    pub fn connect(&self, db: &str) -> postgres::Client {
        connect(&self.url(db))
    }

    /// Creates a database with a new name (the test thread's name in it).
    pub fn fresh_database(&self) -> PgDb {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let thread = std::thread::current();
        let label: String = thread
            .name()
            .unwrap_or("db")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let mut name = format!("t{n}_{label}").to_ascii_lowercase();
        name.truncate(63);
        self.connect("postgres")
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        PgDb {
            url: self.url(&name),
            tcp_url: self.tcp_url(&name),
            name,
        }
    }

    /// Stops the server with a fast shutdown (sessions are ended, as an
    /// administrator's restart would) and waits until every process of it
    /// is gone.
    pub fn stop(&self) {
        self.stop_with(libc::SIGINT);
    }

    /// Kills the server at once (SIGQUIT: an immediate shutdown, crash
    /// recovery on the next start) and waits until it is gone.
    pub fn crash(&self) {
        self.stop_with(libc::SIGQUIT);
    }

    /// Starts it again after [`Server::stop`]: same data, socket and
    /// addresses.
    pub fn start_again(&self) {
        assert!(self.pid().is_none(), "the server still runs");
        self.launch();
    }

    /// [`Server::stop`], then [`Server::start_again`].
    pub fn restart(&self) {
        self.stop();
        self.launch();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.postmaster.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn prefix(&self, cmd: &mut Command) {
        if let Some(netns) = &self.options.netns {
            cmd.args(["netns", "exec", netns, "setpriv"]);
        }
        as_os_user(cmd);
    }

    fn command(&self) -> Command {
        Command::new(if self.options.netns.is_some() {
            "ip"
        } else {
            "setpriv"
        })
    }

    fn initdb(&self) {
        let log = std::fs::File::create(self.dir().join("initdb.log")).expect("initdb.log");
        let mut cmd = Command::new("setpriv");
        as_os_user(&mut cmd);
        let status = cmd
            .arg(bin_dir().join("initdb"))
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", ROLE, "-A", "trust", "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .status()
            .expect("initdb starts");
        assert!(status.success(), "initdb failed:\n{}", self.log());
        // A standby is made with pg_basebackup over the unix socket.
        let mut hba = "local replication all trust\n".to_string();
        for line in &self.options.hba {
            hba.push_str(line);
            hba.push('\n');
        }
        for role in &self.options.passwords {
            hba.push_str(&format!("local all {role} scram-sha-256\n"));
        }
        hba.push_str("local all all trust\n");
        for net in &self.options.trust {
            hba.push_str(&format!("host all all {net} trust\n"));
        }
        std::fs::write(self.data_dir().join("pg_hba.conf"), hba).expect("write pg_hba.conf");
    }

    fn launch(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("server.log");
        let listen: Vec<String> = self.options.listen.iter().map(|a| a.to_string()).collect();
        let mut cmd = self.command();
        self.prefix(&mut cmd);
        cmd.arg(bin_dir().join("postgres"))
            .arg("-D")
            .arg(self.data_dir())
            .arg("-k")
            .arg(self.socket_dir())
            .args(["-p", &PORT.to_string()]);
        let fast: &[&str] = if self.options.durable {
            &[]
        } else {
            &[
                "fsync=off",
                "full_page_writes=off",
                "synchronous_commit=off",
            ]
        };
        for setting in fast
            .iter()
            .map(|s| s.to_string())
            .chain([
                format!("listen_addresses={}", listen.join(",")),
                "max_connections=200".into(),
                "shared_buffers=16MB".into(),
                "unix_socket_permissions=0777".into(),
                "logging_collector=off".into(),
                "log_line_prefix=%m [%p] ".into(),
            ])
            .chain(self.options.settings.iter().cloned())
        {
            cmd.arg("-c").arg(setting);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let child = spawn_from_launcher(cmd).expect("postgres starts");
        *self.lock() = Some(child);
        let url = self.url("postgres");
        let started = std::time::Instant::now();
        loop {
            let last = match postgres::Client::connect(&url, postgres::NoTls) {
                Ok(_) => break,
                Err(e) => e,
            };
            let exited = self
                .lock()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                *self.lock() = None;
                panic!(
                    "PostgreSQL exited ({status}) instead of starting:\n{}",
                    self.log()
                );
            }
            if started.elapsed() > LIMIT {
                self.crash();
                panic!(
                    "PostgreSQL did not accept connections within {LIMIT:?} ({last}):\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop_with(&self, signal: libc::c_int) {
        let Some(mut child) = self.lock().take() else {
            return;
        };
        // SAFETY: plain system call on our unreaped child.
        unsafe {
            libc::kill(child.id() as libc::pid_t, signal);
        }
        // The postmaster ends after all its other processes did.
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.crash();
    }
}

impl PgDb {
    /// A new session on it over the unix socket.
    #[track_caller]
    pub fn connect(&self) -> postgres::Client {
        connect(&self.url)
    }

    /// Runs `sql` (any number of statements) in a session of its own.
    #[track_caller]
    pub fn batch(&self, sql: &str) {
        self.connect()
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The rows of `sql` in a session of its own.
    #[track_caller]
    pub fn query(&self, sql: &str) -> Vec<postgres::Row> {
        self.connect()
            .query(sql, &[])
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The single value `sql` yields.
    #[track_caller]
    pub fn value<T>(&self, sql: &str) -> T
    where
        T: for<'a> postgres::types::FromSql<'a>,
    {
        self.connect()
            .query_one(sql, &[])
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }
}

/// A client for `url`, or a panic that says why not.
#[track_caller]
pub fn connect(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

static SHARED: OnceLock<Server> = OnceLock::new();

/// The server this test binary shares (unix socket only), started on first
/// use and stopped when the process exits. Do not stop it: other tests use
/// it at the same time; start a server of your own for that.
pub fn server() -> &'static Server {
    SHARED.get_or_init(|| {
        let server = Server::start(Options::default());
        // SAFETY: registers a plain `extern "C"` function.
        unsafe {
            libc::atexit(stop_shared);
        }
        server
    })
}

/// At exit: an immediate shutdown of the shared server, then its folder
/// goes. Never blocks on a lock another (dying) thread holds.
extern "C" fn stop_shared() {
    let Some(server) = SHARED.get() else { return };
    let Ok(mut guard) = server.postmaster.try_lock() else {
        return;
    };
    if let Some(mut child) = guard.take() {
        // SAFETY: plain system call on our unreaped child.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGQUIT);
        }
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(server.dir());
}

/// A new database on the shared server.
pub fn fresh_database() -> PgDb {
    server().fresh_database()
}

/// A server of the test's own that also listens on `addr` (in the test's
/// network namespace, e.g. [`super::netns::Host::peer_addr`]) and trusts
/// the /30 around it.
pub fn server_on(addr: Ipv4Addr) -> Server {
    Server::start(Options {
        listen: vec![addr],
        trust: vec![slash30(addr)],
        ..Options::default()
    })
}

/// The /30 network `addr` is in, as `a.b.c.d/30`.
pub fn slash30(addr: Ipv4Addr) -> String {
    format!("{}/30", Ipv4Addr::from(u32::from(addr) & !3))
}

/// The processes `OS_USER` runs whose command is `postgres` (for
/// checks that nothing was left behind).
pub fn postgres_processes() -> Vec<u32> {
    let (uid, _) = os_user_ids();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            status.lines().any(|l| l == "Name:\tpostgres")
                && status.lines().any(|l| {
                    l.strip_prefix("Uid:")
                        .and_then(|ids| ids.split_whitespace().next())
                        .is_some_and(|id| id == uid.to_string())
                })
        })
        .collect()
}

/// The user id that owns process `pid`.
pub fn uid_of(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Waits (at most [`LIMIT`]) until `url` accepts a session; returns it.
#[track_caller]
pub fn reconnect(url: &str) -> postgres::Client {
    let mut client = None;
    wait_until(&format!("a session on {url}"), LIMIT, || {
        client = postgres::Client::connect(url, postgres::NoTls).ok();
        client.is_some()
    });
    client.expect("a session")
}

/// The host name the TLS tests' server certificate is made out to; URLs
/// name it and give the address with `hostaddr`.
pub const NAME: &str = "db.lab.test";

/// A certificate authority, a server certificate it signed for [`NAME`],
/// client certificates for the role `mama`, and another authority that
/// signed a client certificate only.
pub struct Certs {
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Signed by `ca`, made out to `mama`: an EC key in PKCS#8.
    pub client: Pair,
    /// The same certificate, its key in SEC1 (`BEGIN EC PRIVATE KEY`).
    pub client_sec1: Pair,
    /// Signed by `ca`, made out to `mama`: an RSA key in PKCS#1 (`BEGIN
    /// RSA PRIVATE KEY`).
    pub client_rsa: Pair,
    /// Made out to `mama`, but signed by `other_ca`.
    pub other_client: Pair,
}

/// A certificate and its private key (mode 0600, owned by the test).
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[track_caller]
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (tests/install-tools installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes `NAME.crt` and `NAME.key` in `dir`: a certificate for `subject`
/// signed by the authority `ca` (`ca.crt`, `ca.key`) with the extensions
/// `ext`, its key made by `openssl req` with `newkey`.
fn make_signed(dir: &Path, name: &str, subject: &str, ca: &str, newkey: &[&str], ext: &str) {
    let (key, csr, crt, extfile) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
        format!("{name}.ext"),
    );
    let mut args = vec!["req", "-new", "-nodes"];
    args.extend(newkey);
    args.extend(["-keyout", &key, "-out", &csr, "-subj", subject]);
    openssl(dir, &args);
    std::fs::write(dir.join(&extfile), ext).expect("write the extensions");
    let (ca_crt, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &crt,
            "-extfile",
            &extfile,
        ],
    );
}

/// Makes [`Certs`] in `dir`, the server's key readable by the server's
/// user alone, the clients' by the test's.
pub fn make_certs(dir: &Path) -> Certs {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    for ca in ["ca", "other-ca"] {
        let (key, crt, subject) = (
            format!("{ca}.key"),
            format!("{ca}.crt"),
            format!("/CN=mama test {ca}"),
        );
        let mut args = vec!["req", "-x509", "-nodes", "-days", "2"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &crt, "-subj", &subject]);
        args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
        args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        openssl(dir, &args);
    }
    make_signed(
        dir,
        "server",
        &format!("/CN={NAME}"),
        "ca",
        &ec,
        &format!(
            "subjectAltName=DNS:{NAME}\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
        ),
    );
    let client_ext = "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
                      extendedKeyUsage=clientAuth\n";
    make_signed(dir, "client", "/CN=mama", "ca", &ec, client_ext);
    make_signed(dir, "other-client", "/CN=mama", "other-ca", &ec, client_ext);
    make_signed(
        dir,
        "client-rsa",
        "/CN=mama",
        "ca",
        &["-newkey", "rsa:2048"],
        client_ext,
    );
    // The other forms of a key libpq reads: SEC1 and PKCS#1.
    openssl(dir, &["ec", "-in", "client.key", "-out", "client-sec1.key"]);
    openssl(
        dir,
        &[
            "rsa",
            "-in",
            "client-rsa.key",
            "-traditional",
            "-out",
            "client-rsa.key",
        ],
    );
    for (file, header) in [
        ("client.key", "-----BEGIN PRIVATE KEY-----"),
        ("client-sec1.key", "-----BEGIN EC PRIVATE KEY-----"),
        ("client-rsa.key", "-----BEGIN RSA PRIVATE KEY-----"),
    ] {
        let text = std::fs::read_to_string(dir.join(file)).expect("read a key");
        assert!(text.starts_with(header), "{file}: {text}");
    }
    let (uid, gid) = os_user_ids();
    set_mode(dir, 0o755);
    for file in ["server.key", "server.crt"] {
        std::os::unix::fs::chown(dir.join(file), Some(uid), Some(gid)).expect("chown");
    }
    for key in [
        "server.key",
        "client.key",
        "client-sec1.key",
        "client-rsa.key",
        "other-client.key",
    ] {
        set_mode(&dir.join(key), 0o600);
    }
    let pair = |cert: &str, key: &str| Pair {
        cert: dir.join(cert),
        key: dir.join(key),
    };
    Certs {
        ca: dir.join("ca.crt"),
        other_ca: dir.join("other-ca.crt"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
        client: pair("client.crt", "client.key"),
        client_sec1: pair("client.crt", "client-sec1.key"),
        client_rsa: pair("client-rsa.crt", "client-rsa.key"),
        other_client: pair("other-client.crt", "other-client.key"),
    }
}

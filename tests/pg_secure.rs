//! A database lab as a team's server runs it: sessions encrypted as
//! libpq's `sslmode` asks (certificates made with `openssl` here), and a
//! hot standby never taken for the lab.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::common::pg::{Certs, NAME, Options, Pair, PgDb, Server, make_certs};
use crate::common::*;

/// A loopback address of the test's own (servers listen on the same
/// port): 127.0.77.N.
fn loopback() -> Ipv4Addr {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    Ipv4Addr::new(127, 0, 77, NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A server on a loopback address of its own with `ssl=on` and `certs`
/// (asking clients for a certificate signed by `certs.ca`, which the
/// `cert` method of `pg_hba.conf` needs), whose `pg_hba.conf` starts with
/// `hba` (the address is `ADDR` there); it logs every session's
/// authentication.
fn tls_server(certs: Option<&Certs>, hba: &[&str]) -> (Server, Ipv4Addr) {
    let addr = loopback();
    let mut settings = vec!["log_connections=on".to_string()];
    if let Some(certs) = certs {
        settings.push("ssl=on".to_string());
        settings.push(format!("ssl_cert_file={}", certs.cert.display()));
        settings.push(format!("ssl_key_file={}", certs.key.display()));
        settings.push(format!("ssl_ca_file={}", certs.ca.display()));
    }
    let server = Server::start(Options {
        listen: vec![addr],
        settings,
        hba: hba
            .iter()
            .map(|line| line.replace("ADDR", "127.0.0.0/8"))
            .collect(),
        ..Options::default()
    });
    (server, addr)
}

/// A world on a fresh database of `server` whose state is
/// `postgresql://mama@NAME/DB?hostaddr=ADDR` and `query` after it;
/// `HOME` is its folder (no `~/.postgresql/root.crt` there).
fn world(server: &Server, addr: Ipv4Addr, query: &str) -> TestEnv {
    let db = server.fresh_database();
    let url = format!(
        "postgresql://mama@{NAME}:{}/{}?hostaddr={addr}&connect_timeout=10{query}",
        crate::common::pg::PORT,
        db.name
    );
    TestEnv {
        dir: tempfile::tempdir().expect("temporary folder"),
        state: url.into(),
        db: Some(db),
    }
}

impl TestEnv {
    /// `mama ARGS` with the state `query` appended, `HOME` this world's
    /// folder, and the environment `vars`.
    fn run_tls(&self, query: &str, vars: &[(&str, &str)], args: &[&str]) -> Run {
        let state = format!("{}{query}", self.state.display());
        let mut cmd = self.cmd(args);
        cmd.env("MAMA_STATE", state)
            .env("HOME", self.path())
            .env_remove("PGSSLMODE")
            .env_remove("PGSSLROOTCERT")
            .env_remove("PGSSLCERT")
            .env_remove("PGSSLKEY")
            .envs(vars.iter().copied());
        cmd.output().expect("mama runs").into()
    }
}

#[test]
#[cfg_attr(
    not(mama_postgres),
    ignore = "needs a PostgreSQL server run as the postgres user: run as root after tests/install-tools"
)]
fn sessions_are_encrypted_as_sslmode_asks() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let certs = make_certs(dir.path());
    // Only encrypted sessions over TCP: whatever works here was encrypted.
    let (server, addr) = tls_server(Some(&certs), &["hostssl all all ADDR trust"]);
    let env = world(&server, addr, "");
    let ca = format!("&sslrootcert={}", certs.ca.display());
    let other_ca = format!("&sslrootcert={}", certs.other_ca.display());
    // The default (prefer) takes the server's TLS.
    env.run_tls("", &[], &["add", "rig1", "--mac", "aa:bb:cc:dd:ee:01"])
        .ok();
    for (query, vars) in [
        ("&sslmode=require", &[][..]),
        ("&sslmode=allow", &[]),
        ("&sslmode=prefer", &[]),
        (&format!("&sslmode=verify-ca{ca}"), &[]),
        (&format!("&sslmode=verify-full{ca}"), &[]),
        // From the environment, as libpq reads it.
        (
            "",
            &[
                ("PGSSLMODE", "verify-full"),
                ("PGSSLROOTCERT", &certs.ca.to_string_lossy()),
            ],
        ),
    ] {
        let run = env.run_tls(query, vars, &["list"]);
        assert!(run.ok().contains("rig1"), "{query} {vars:?}: {run:#?}");
    }
    // libpq's default root certificate file makes require check it.
    std::fs::create_dir(env.path().join(".postgresql")).expect("mkdir");
    std::fs::copy(&certs.other_ca, env.path().join(".postgresql/root.crt")).expect("copy");
    env.run_tls("&sslmode=require", &[], &["list"])
        .fails_saying(1, "is not signed by a certificate authority in");
    std::fs::copy(&certs.ca, env.path().join(".postgresql/root.crt")).expect("copy");
    env.run_tls("&sslmode=verify-full", &[], &["list"]).ok();
    std::fs::remove_dir_all(env.path().join(".postgresql")).expect("rm");

    // Another authority's certificates, another name, no root file: refused,
    // saying why.
    let run = env.run_tls(&format!("&sslmode=verify-full{other_ca}"), &[], &["list"]);
    run.fails_saying(
        1,
        "the server's certificate is not signed by a certificate authority in",
    );
    assert!(run.stderr.contains("other-ca.crt"), "{run:#?}");
    let wrong_name = env
        .state
        .display()
        .to_string()
        .replace(NAME, "other.lab.test");
    let mut cmd = env.cmd(["list"]);
    cmd.env(
        "MAMA_STATE",
        format!("{wrong_name}&sslmode=verify-full{ca}"),
    );
    let run: Run = cmd.output().expect("mama runs").into();
    run.fails_saying(1, "is not made out to the host name other.lab.test");
    // verify-ca does not look at the name.
    let mut cmd = env.cmd(["list"]);
    cmd.env("MAMA_STATE", format!("{wrong_name}&sslmode=verify-ca{ca}"));
    Run::from(cmd.output().expect("mama runs")).ok();
    env.run_tls("&sslmode=verify-ca", &[], &["list"])
        .fails_saying(1, "does not exist");
    env.run_tls("&sslmode=verify-everything", &[], &["list"])
        .fails_saying(1, "verify-full");
    env.run_tls("", &[("PGSSLMODE", "bogus")], &["list"])
        .fails_saying(1, "PGSSLMODE");

    // In clear: the server refuses it, whether the URL or PGSSLMODE asks.
    for (query, vars) in [
        ("&sslmode=disable", &[][..]),
        ("", &[("PGSSLMODE", "disable")]),
    ] {
        env.run_tls(query, vars, &["list"])
            .fails_saying(1, "no encryption");
    }
}

/// `&sslcert=CERT&sslkey=KEY` for `pair`.
fn client_query(pair: &Pair) -> String {
    format!(
        "&sslcert={}&sslkey={}",
        pair.cert.display(),
        pair.key.display()
    )
}

#[test]
#[cfg_attr(
    not(mama_postgres),
    ignore = "needs a PostgreSQL server run as the postgres user: run as root after tests/install-tools"
)]
fn a_client_certificate_is_shown_when_the_server_asks() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let certs = make_certs(dir.path());
    // mama logs in by its certificate alone (its name must be the role's).
    let (server, addr) = tls_server(Some(&certs), &["hostssl all mama ADDR cert"]);
    let env = world(
        &server,
        addr,
        &format!("&sslmode=verify-full&sslrootcert={}", certs.ca.display()),
    );
    let logins = || {
        server
            .log()
            .matches("identity=\"CN=mama\" method=cert")
            .count()
    };

    // From the URL: every session of the command shows it, the job's too.
    let by_url = client_query(&certs.client);
    env.run_tls(&by_url, &[], &["add", "rig1", "--mac", "aa:bb:cc:dd:ee:01"])
        .ok();
    let before = logins();
    assert!(
        before >= 1,
        "the server took the certificate:\n{}",
        server.log()
    );
    let job = env.run_tls(&by_url, &[], &["run", "rig1", "--", "true"]);
    assert_eq!(job.code, Some(0), "{job:#?}");
    assert!(logins() > before, "{}", server.log());
    // Without one, the server's refusal says why.
    let refused = env.run_tls("", &[], &["list"]);
    let said = refused.fails_saying(1, "requires a valid client certificate");
    assert!(
        said.contains("sslcert=PATH and sslkey=PATH"),
        "{refused:#?}"
    );
    // Every form of key libpq reads: PKCS#8 (above), SEC1 and PKCS#1, from
    // the environment too.
    for pair in [&certs.client_sec1, &certs.client_rsa] {
        let run = env.run_tls(&client_query(pair), &[], &["list", "--names"]);
        assert_eq!(run.ok(), "rig1\n", "{}", pair.key.display());
    }
    let (cert, key) = (
        certs.client_sec1.cert.to_string_lossy().into_owned(),
        certs.client_sec1.key.to_string_lossy().into_owned(),
    );
    env.run_tls("", &[("PGSSLCERT", &cert), ("PGSSLKEY", &key)], &["list"])
        .ok();
    // libpq's files under ~/.postgresql, where there.
    let home = env.path().join(".postgresql");
    std::fs::create_dir(&home).expect("mkdir");
    let (default_cert, default_key) = (home.join("postgresql.crt"), home.join("postgresql.key"));
    std::fs::copy(&certs.client_rsa.cert, &default_cert).expect("copy");
    std::fs::copy(&certs.client_rsa.key, &default_key).expect("copy");
    env.run_tls("", &[], &["list"]).ok();

    // A key group or others may read is refused, as libpq refuses it,
    // naming the file and the fix; so is one the URL names.
    use std::os::unix::fs::PermissionsExt;
    let chmod = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    chmod(&default_key, 0o644);
    let refused = env.run_tls("", &[], &["list"]);
    let said = refused.fails_saying(1, "has group or world access (mode 0644)");
    assert!(
        said.contains(&format!("{} (sslkey's default)", default_key.display()))
            && said.contains(&format!("chmod 600 {}", default_key.display())),
        "{refused:#?}"
    );
    let open_key = dir.path().join("open.key");
    std::fs::copy(&certs.client.key, &open_key).expect("copy");
    chmod(&open_key, 0o644);
    let query = format!(
        "&sslcert={}&sslkey={}",
        certs.client.cert.display(),
        open_key.display()
    );
    let refused = env.run_tls(&query, &[], &["list"]);
    let said = refused.fails_saying(1, "has group or world access");
    assert!(
        said.contains(&format!("{} (sslkey)", open_key.display())),
        "{refused:#?}"
    );
    // A certificate without its key: said, naming what is missing.
    std::fs::remove_file(&default_key).expect("rm");
    env.run_tls("", &[], &["list"]).fails_saying(
        1,
        &format!(
            "the client certificate {} (sslcert's default) has no private key ({} is not there)",
            default_cert.display(),
            default_key.display()
        ),
    );
    std::fs::remove_dir_all(&home).expect("rm");
    let key_only = format!("&sslkey={}", certs.client.key.display());
    env.run_tls(&key_only, &[], &["list"])
        .fails_saying(1, "is given without a client certificate");
    // Files that are not there, or not PEM: named, with the setting, and
    // no password shown.
    let missing = dir.path().join("missing.crt");
    let with_password = env
        .state
        .display()
        .to_string()
        .replace("mama@", "mama:S3cret@");
    let mut cmd = env.cmd(["list"]);
    cmd.env(
        "MAMA_STATE",
        format!(
            "{with_password}&sslcert={}&sslkey={}",
            missing.display(),
            certs.client.key.display()
        ),
    )
    .env("HOME", env.path());
    let run = Run::from(cmd.output().expect("mama runs"));
    let said = run.fails_saying(
        1,
        &format!(
            "cannot read the client certificate {} (sslcert): it does not exist",
            missing.display()
        ),
    );
    assert!(!said.contains("S3cret"), "{run:#?}");
    let query = format!(
        "&sslcert={}&sslkey={}",
        certs.client.key.display(),
        certs.client.key.display()
    );
    env.run_tls(&query, &[], &["list"])
        .fails_saying(1, "holds no certificate");
    let not_a_key = dir.path().join("not-a.key");
    std::fs::copy(&certs.client.cert, &not_a_key).expect("copy");
    chmod(&not_a_key, 0o600);
    let query = format!(
        "&sslcert={}&sslkey={}",
        certs.client.cert.display(),
        not_a_key.display()
    );
    env.run_tls(&query, &[], &["list"])
        .fails_saying(1, "holds no private key");
    // Another authority's certificate: the server refuses it.
    let refused = env.run_tls(&client_query(&certs.other_client), &[], &["list"]);
    refused.fails_saying(
        1,
        &format!(
            "the server refused the client certificate {} (sslcert)",
            certs.other_client.cert.display()
        ),
    );
}

#[test]
#[cfg_attr(
    not(mama_postgres),
    ignore = "needs a PostgreSQL server run as the postgres user: run as root after tests/install-tools"
)]
fn a_password_goes_in_clear_only_when_asked_and_is_then_told_of() {
    let (server, addr) = tls_server(None, &["host all all ADDR scram-sha-256"]);
    let env = world(&server, addr, "");
    server
        .connect("postgres")
        .batch_execute("ALTER ROLE mama PASSWORD 'S3cret'")
        .expect("set the password");
    let with_password = env
        .state
        .display()
        .to_string()
        .replace("mama@", "mama:S3cret@");
    let run = |query: &str, args: &[&str]| -> Run {
        let mut cmd = env.cmd(args);
        cmd.env("MAMA_STATE", format!("{with_password}{query}"))
            .env("HOME", env.path())
            .env_remove("PGSSLMODE");
        cmd.output().expect("mama runs").into()
    };
    // No sslmode given: the password is never sent to a server without TLS.
    run("", &["add", "rig0", "--mac", "aa:bb:cc:dd:ee:00"]).fails_saying(
        1,
        "the server offers no TLS, and the password would cross the network in clear",
    );
    // Asked for (prefer falls back to clear): sent, and told of.
    let added = run(
        "&sslmode=prefer",
        &["add", "rig1", "--mac", "aa:bb:cc:dd:ee:01"],
    );
    let warning = added.ok_saying("is not encrypted");
    assert!(!warning.contains("S3cret"), "{added:#?}");
    // Once a command, however many sessions it opens.
    assert_eq!(
        added.stderr.matches("is not encrypted").count(),
        1,
        "{added:#?}"
    );
    // Asked for in clear, it is not warned of.
    let plain = run("&sslmode=disable", &["list", "--names"]);
    assert!(!plain.stderr.contains("not encrypted"), "{plain:#?}");
    assert_eq!(plain.ok(), "rig1\n", "the refused add added nothing");
    run("&sslmode=require", &["list"]).fails_saying(1, "the server does not offer TLS");
    // No password: said so, not "invalid configuration".
    let mut cmd = env.cmd(["list"]);
    cmd.env("HOME", env.path()).env_remove("PGPASSWORD");
    Run::from(cmd.output().expect("mama runs"))
        .fails_saying(1, "the server asks for a password and none was given");
    cmd.env("PGPASSWORD", "wrong");
    Run::from(cmd.output().expect("mama runs"))
        .fails_saying(1, "the password would cross the network in clear");
    // PGSSLMODE asks for it as the URL can.
    cmd.env("PGSSLMODE", "prefer");
    Run::from(cmd.output().expect("mama runs")).fails_saying(1, "password authentication failed");
    cmd.env("PGPASSWORD", "S3cret");
    Run::from(cmd.output().expect("mama runs")).ok();
    // Nobody listens there.
    let nobody = env.state.display().to_string().replace(":5432/", ":1/");
    cmd.env("MAMA_STATE", nobody);
    Run::from(cmd.output().expect("mama runs"))
        .fails_saying(1, "the server refused the connection");
}

#[test]
#[cfg_attr(
    not(mama_postgres),
    ignore = "needs a PostgreSQL server run as the postgres user: run as root after tests/install-tools"
)]
fn a_standby_is_refused_for_reads_too() {
    let primary = Server::start(Options::default());
    let db = primary.fresh_database();
    let env = TestEnv {
        dir: tempfile::tempdir().expect("temporary folder"),
        state: db.url.clone().into(),
        db: Some(db.clone()),
    };
    env.add("rig1", 1);
    env.add("rig2", 2);
    // A claim whose holder is gone: what `list` or `wait` would clear.
    let element: String = db.value("SELECT element FROM mama_machine WHERE name = 'rig1'");
    let element = with_job(&element, "rig1", "gone", Some(dead_pid()), unix_now());
    db.connect()
        .execute(
            "UPDATE mama_machine SET element = $1 WHERE name = 'rig1'",
            &[&element],
        )
        .expect("write the claim");
    let before = env.stored();
    let standby = Server::standby_of(&primary);
    let at_standby = PgDb {
        name: db.name.clone(),
        url: standby.url(&db.name),
        tcp_url: None,
    };
    wait_until("the standby has the lab", LIMIT, || {
        standby
            .connect(&db.name)
            .query_opt(
                "SELECT 1 FROM mama_machine WHERE element LIKE '%gone%'",
                &[],
            )
            .ok()
            .flatten()
            .is_some()
    });
    let standby_env = TestEnv {
        dir: tempfile::tempdir().expect("temporary folder"),
        state: at_standby.url.clone().into(),
        db: Some(at_standby),
    };
    for args in [
        &["list"][..],
        &["wait", "rig2", "--timeout", "1"],
        &["wait", "rig1", "--timeout", "1"],
        &["run", "rig2", "--", "true"],
        &["clear", "rig1"],
    ] {
        let run = standby_env.run(args);
        // `run` fails as mama's own failures do (125).
        let code = if args[0] == "run" { 125 } else { 1 };
        let stderr = run.fails_saying(code, "is a read-only standby");
        assert!(
            stderr.contains("give the primary's address"),
            "{args:?}: {run:#?}"
        );
        assert!(run.stdout.is_empty(), "{args:?}: {run:#?}");
    }
    assert_eq!(env.stored(), before, "nothing changed on the primary");
}

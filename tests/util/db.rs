//! The test database, on whichever backend this run uses.
//!
//! `scripts/test.sh` runs the integration tests twice: once on SQLite (the default) and
//! once with `UWPX_TEST_PG` set to the admin URL of a throw-away PostgreSQL server
//! (scripts/pg.sh). Then every server a test starts gets a fresh database of its own on
//! that server, and [`Db`] reads and writes it the same way a test reads a SQLite file,
//! so the tests are written once for both backends.

use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};

/// The admin URL of the PostgreSQL server this run tests against, if any.
pub fn pg_admin() -> Option<String> {
    std::env::var("UWPX_TEST_PG").ok().filter(|u| !u.is_empty())
}

/// Whether this run tests PostgreSQL.
pub fn on_postgres() -> bool {
    pg_admin().is_some()
}

/// A fresh, empty database on the test PostgreSQL server; its URL.
pub fn fresh_pg_database(admin: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "t_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let mut client = postgres::Client::connect(admin, postgres::NoTls).unwrap();
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    with_dbname(admin, &name)
}

/// `admin` with its database name replaced by `db`.
pub fn with_dbname(admin: &str, db: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (admin, String::new()),
    };
    let cut = base.rfind('/').unwrap();
    format!("{}/{db}{query}", &base[..cut])
}

/// The `db` section for a new server in `dir`: a fresh PostgreSQL database, or the
/// SQLite file `push.db`.
pub fn db_section() -> Value {
    match pg_admin() {
        Some(admin) => json!({"url": fresh_pg_database(&admin)}),
        None => json!({"path": "push.db", "synchronous": "normal"}),
    }
}

/// A connection to a test server's database, SQLite or PostgreSQL.
pub enum Db {
    Sqlite(rusqlite::Connection),
    Pg(Box<postgres::Client>),
}

impl Db {
    /// Opens the database of the server configured by `config` (in `dir`).
    pub fn open(config: &Value, dir: &std::path::Path) -> Db {
        match config["db"]["url"].as_str() {
            Some(url) => Db::Pg(Box::new(
                postgres::Client::connect(url, postgres::NoTls).unwrap(),
            )),
            None => Db::Sqlite(
                rusqlite::Connection::open(dir.join(config["db"]["path"].as_str().unwrap()))
                    .unwrap(),
            ),
        }
    }

    /// Every row of a query whose columns are all text, each row's columns joined by
    /// a space (portable SQL only: `coalesce`, `||`, `CAST(x AS TEXT)`).
    pub fn rows(&mut self, sql: &str) -> Vec<String> {
        match self {
            Db::Sqlite(c) => {
                let mut stmt = c.prepare(sql).unwrap();
                let n = stmt.column_count();
                stmt.query_map([], |r| {
                    (0..n)
                        .map(|i| r.get::<_, String>(i))
                        .collect::<Result<Vec<_>, _>>()
                        .map(|v| v.join(" "))
                })
                .unwrap()
                .map(Result::unwrap)
                .collect()
            }
            Db::Pg(c) => c
                .query(sql, &[])
                .unwrap()
                .iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| r.get::<_, String>(i))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect(),
        }
    }

    /// One integer (`SELECT … ` of a single BIGINT/INTEGER value).
    pub fn int(&mut self, sql: &str) -> i64 {
        match self {
            Db::Sqlite(c) => c.query_row(sql, [], |r| r.get(0)).unwrap(),
            Db::Pg(c) => c.query_one(sql, &[]).unwrap().get(0),
        }
    }

    /// Runs a statement.
    pub fn exec(&mut self, sql: &str) {
        match self {
            Db::Sqlite(c) => {
                c.execute_batch(sql).unwrap();
            }
            Db::Pg(c) => c.batch_execute(sql).unwrap(),
        }
    }
}

/// A PostgreSQL server of a test's own (scripts/pg.sh), for tests that stop and start
/// the database: the shared test server must not go away under other tests.
pub struct OwnPg {
    dir: super::TempDir,
}

impl OwnPg {
    pub fn start() -> Self {
        let dir = super::TempDir::new("pg");
        let own = Self { dir };
        own.pg(&["start"]);
        own
    }

    fn pg(&self, args: &[&str]) -> String {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg.sh");
        let out = std::process::Command::new("bash")
            .arg(script)
            .args(args)
            .arg(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// The admin URL (database `postgres`).
    pub fn url(&self) -> String {
        self.pg(&["url"])
    }

    pub fn port(&self) -> u16 {
        std::fs::read_to_string(self.dir.path().join("port"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    pub fn stop(&self) {
        self.pg(&["stop"]);
    }

    pub fn restart(&self) {
        self.pg(&["start"]);
    }
}

impl Drop for OwnPg {
    fn drop(&mut self) {
        self.pg(&["stop"]);
    }
}

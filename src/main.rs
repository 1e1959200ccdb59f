//! The `uwpx-push-server` command line.
//!
//! ```text
//! uwpx-push-server [--config PATH]                  run the server (default ./configuration.json)
//! uwpx-push-server check-config [--config PATH]     validate and print the effective configuration
//! uwpx-push-server stats [--devices] [--config PATH]  devices, accounts, last seen, token expiry;
//!                                                   --devices: one line per device
//! uwpx-push-server test-push DEVICE_ID [--config PATH]      send a test push, print the outcome
//! uwpx-push-server remove-device DEVICE_ID [--config PATH]  delete a device and its accounts
//! uwpx-push-server migrate-db SQLITE_FILE [--config PATH]   copy an SQLite database into
//!                                                   the (empty) PostgreSQL one of db.url
//! DEVICE_ID is a whole id or a unique prefix of at least 6 characters.
//! ```
//! The admin commands open the same database and are safe while the server runs
//! (`migrate-db` only reads the SQLite file; stop the server first so nothing is missed).
//! Exit codes: 0 success, 1 could not start / the admin command failed, 2 bad usage or
//! bad configuration.
//!
//! Threads: `main` parses, starts the app, then sleeps until Ctrl+C/SIGTERM; the
//! `ctrlc` thread only forwards the signal. A second signal exits at once.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};

use uwpx_push_server::admin;
use uwpx_push_server::app::App;
use uwpx_push_server::config::Config;
use uwpx_push_server::shutdown::Shutdown;

const USAGE: &str = "usage: uwpx-push-server [check-config | stats [--devices] | test-push DEVICE_ID | remove-device DEVICE_ID | migrate-db SQLITE_FILE] [--config PATH]";

enum Command {
    Run,
    CheckConfig,
    Stats { devices: bool },
    TestPush(String),
    RemoveDevice(String),
    MigrateDb(PathBuf),
}

fn parse_args() -> Result<(Command, PathBuf), String> {
    let mut args = std::env::args().skip(1);
    let mut command = None;
    let mut path = PathBuf::from("configuration.json");
    while let Some(arg) = args.next() {
        let mut device = || args.next().ok_or(format!("{arg} needs a DEVICE_ID"));
        let next = match arg.as_str() {
            "--config" | "-c" => {
                path = args
                    .next()
                    .map(PathBuf::from)
                    .ok_or("--config needs a path")?;
                continue;
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--version" | "-V" => {
                println!("uwpx-push-server {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            "check-config" => Command::CheckConfig,
            "stats" => Command::Stats { devices: false },
            "--devices" => match &mut command {
                Some(Command::Stats { devices }) => {
                    *devices = true;
                    continue;
                }
                _ => return Err("--devices goes after stats".into()),
            },
            "test-push" => Command::TestPush(device()?),
            "remove-device" => Command::RemoveDevice(device()?),
            "migrate-db" => Command::MigrateDb(
                args.next()
                    .map(PathBuf::from)
                    .ok_or("migrate-db needs the SQLite file to copy")?,
            ),
            other => return Err(format!("unexpected argument `{other}`")),
        };
        if command.replace(next).is_some() {
            return Err("give one command at most".into());
        }
    }
    Ok((command.unwrap_or(Command::Run), path))
}

fn main() -> ExitCode {
    let (command, path) = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("uwpx-push-server: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("uwpx-push-server: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::CheckConfig = command {
        println!("{}: OK\n{config:#?}", path.display());
        return ExitCode::SUCCESS;
    }
    if let Err(e) = init_logging(&config) {
        eprintln!("uwpx-push-server: {e}");
        return ExitCode::from(2);
    }
    let result = match command {
        Command::Run | Command::CheckConfig => return run(&config),
        Command::Stats { devices } => admin::stats(&config, devices),
        Command::TestPush(id) => admin::test_push(&config, &id),
        Command::RemoveDevice(id) => admin::remove_device(&config, &id),
        Command::MigrateDb(file) => admin::migrate_db(&config, &file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uwpx-push-server: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(config: &Config) -> ExitCode {
    let shutdown = Shutdown::new();
    let app = match App::start(config, shutdown) {
        Ok(app) => app,
        Err(e) => {
            log::error!("{e}");
            eprintln!("uwpx-push-server: {e}");
            return ExitCode::from(1);
        }
    };
    let (tx, rx) = crossbeam_channel::bounded::<()>(1);
    static SIGNALS: AtomicUsize = AtomicUsize::new(0);
    let handler = ctrlc::set_handler(move || {
        if SIGNALS.fetch_add(1, Ordering::SeqCst) > 0 {
            eprintln!("uwpx-push-server: second signal, exiting now");
            std::process::exit(130);
        }
        let _ = tx.try_send(());
    });
    if let Err(e) = handler {
        log::error!("cannot install the signal handler: {e}");
        app.stop();
        return ExitCode::from(1);
    }
    let _ = rx.recv();
    app.stop();
    ExitCode::SUCCESS
}

/// Logs to stderr (and `log.file`), one `write` per line: a daemon's log goes to
/// journald or a file, so plain lines without colour codes, and a `LineWriter` so a
/// line is never split across writes (simplelog's terminal logger issues several
/// writes per line, which cost more than the request being logged).
fn init_logging(config: &Config) -> Result<(), String> {
    use simplelog::{CombinedLogger, ConfigBuilder, LevelFilter, SharedLogger, WriteLogger};
    use std::io::LineWriter;
    let mut builder = ConfigBuilder::new();
    builder
        .set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .set_time_format_rfc3339()
        // Only our own lines: driver crates log query parameters (tokio-postgres at
        // debug), and those carry secrets, device ids and channel URIs.
        .add_filter_allow_str("uwpx_push_server");
    let _ = builder.set_time_offset_to_local();
    let log_config = builder.build();
    let mut loggers: Vec<Box<dyn SharedLogger>> = vec![WriteLogger::new(
        config.log.level,
        log_config.clone(),
        LineWriter::new(std::io::stderr()),
    )];
    if let Some(path) = &config.log.file {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| {
                format!(
                    "configuration: `log.file` cannot open {}: {e}",
                    path.display()
                )
            })?;
        loggers.push(WriteLogger::new(
            config.log.level,
            log_config,
            LineWriter::new(file),
        ));
    }
    CombinedLogger::init(loggers).map_err(|e| format!("cannot start logging: {e}"))
}

//! The `uwpx-push-server` command line: `uwpx-push-server help` lists the commands and
//! options ([`HELP`]). The admin commands open the same database and are safe while the
//! server runs. Exit codes: 0 success, 1 could not start / the admin command failed, 2 bad
//! usage or bad configuration.
//!
//! Threads: `main` parses, starts the app, then sleeps until SIGINT (Ctrl+C) or SIGTERM.
//! The `signals` thread forwards those to `main` (a second one exits at once) and
//! handles SIGHUP itself by reopening `log.file`, for logrotate.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use uwpx_push_server::admin;
use uwpx_push_server::app::App;
use uwpx_push_server::config::{Config, ConfigError};
use uwpx_push_server::logging::{self, LogFile};
use uwpx_push_server::shutdown::Shutdown;

/// `--help`: every command and option, one line each.
const HELP: &str = "\
uwpx-push-server: the XEP-0357 push server for UWPX (wakes devices through WNS)

Usage: uwpx-push-server [COMMAND] [--config PATH]

Commands:
  run                      run the server (the default when no command is given)
  check-config             validate the configuration and print it, secrets masked
  stats [--devices]        devices, accounts, oldest and newest last seen, WNS token expiry;
                           --devices: one line per device (id, generation, accounts, last seen)
  test-push DEVICE_ID      send a test push to one device and print the WNS outcome
  remove-device DEVICE_ID  delete a device and its accounts
                           (DEVICE_ID: a whole id or a unique prefix of at least 6 characters)
  migrate-db SQLITE_FILE   copy an SQLite database into the empty PostgreSQL one of db.url
                           (reads the file only; stop the server that writes it first)
  help                     print this help

Options:
  -c, --config PATH        the configuration file (default ./configuration.json); also --config=PATH
  -h, --help               print this help
  -V, --version            print the version

Exit codes: 0 success, 1 could not start or the command failed, 2 bad usage or configuration.
";

/// The one-line reminder printed after a usage error.
const USAGE: &str = "usage: uwpx-push-server [run | check-config | stats [--devices] | test-push DEVICE_ID | remove-device DEVICE_ID | migrate-db SQLITE_FILE | help] [--config PATH]";

/// What the command line asks for.
enum Command {
    Run,
    CheckConfig,
    Stats {
        /// `--devices`: one line per device.
        devices: bool,
    },
    TestPush(String),
    RemoveDevice(String),
    Help,
    Version,
    MigrateDb(PathBuf),
}

/// The parsed command line.
struct Args {
    command: Command,
    /// `--config`, or `configuration.json` in the working directory.
    config: PathBuf,
    /// Whether `--config` was given (a missing default file gets a hint).
    config_given: bool,
}

/// Options may come before or after the command; `--config PATH`, `--config=PATH` and
/// `-c PATH` are the same.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut positional = Vec::new();
    let mut config = None;
    let mut devices = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--devices" => devices = true,
            "--config" | "-c" => config = Some(args.next().ok_or("--config needs a path")?),
            "--help" | "-h" => positional.insert(0, "help".to_owned()),
            "--version" | "-V" => positional.insert(0, "--version".to_owned()),
            s if s.starts_with("--config=") => {
                let path = &s["--config=".len()..];
                if path.is_empty() {
                    return Err("--config= needs a path".into());
                }
                config = Some(path.to_owned());
            }
            s if s.starts_with('-') && s.len() > 1 => {
                return Err(format!("unexpected argument `{s}`"));
            }
            _ => positional.push(arg),
        }
    }
    let mut rest = positional.into_iter();
    let first = rest.next();
    let mut device = |name: &str| {
        rest.next().ok_or(format!(
            "{name} needs a DEVICE_ID: uwpx-push-server {name} DEVICE_ID [--config PATH]"
        ))
    };
    let command = match first.as_deref() {
        None | Some("run") => Command::Run,
        Some("check-config") => Command::CheckConfig,
        Some("stats") => Command::Stats { devices },
        Some("test-push") => Command::TestPush(device("test-push")?),
        Some("remove-device") => Command::RemoveDevice(device("remove-device")?),
        Some("migrate-db") => Command::MigrateDb(PathBuf::from(rest.next().ok_or(
            "migrate-db needs the SQLite file: uwpx-push-server migrate-db SQLITE_FILE [--config PATH]",
        )?)),
        Some("help") => return Ok(Args::just(Command::Help)),
        Some("--version") => return Ok(Args::just(Command::Version)),
        Some(other) => return Err(format!("unexpected argument `{other}`")),
    };
    if let Some(extra) = rest.next() {
        return Err(format!("unexpected argument `{extra}`"));
    }
    if devices && !matches!(command, Command::Stats { .. }) {
        return Err("--devices goes with stats".into());
    }
    Ok(Args {
        command,
        config_given: config.is_some(),
        config: config.map_or_else(|| PathBuf::from("configuration.json"), PathBuf::from),
    })
}

impl Args {
    fn just(command: Command) -> Self {
        Self {
            command,
            config: PathBuf::new(),
            config_given: false,
        }
    }
}

/// Prints to stdout; a reader that went away (`check-config | head`) is not an error.
fn print_out(text: &str) -> ExitCode {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uwpx-push-server: cannot write to stdout: {e}");
            ExitCode::from(1)
        }
    }
}

/// One stderr line for a configuration error; a missing default file says where to
/// start.
fn config_error(e: &ConfigError, args: &Args) -> String {
    match e {
        ConfigError::Read { source, .. }
            if source.kind() == io::ErrorKind::NotFound && !args.config_given =>
        {
            format!(
                "uwpx-push-server: {e}; copy configuration.json.example to configuration.json and edit it, or name the file with --config PATH"
            )
        }
        ConfigError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound => {
            format!(
                "uwpx-push-server: {e}; configuration.json.example in the source tree is a starting point"
            )
        }
        _ => format!("uwpx-push-server: {e}"),
    }
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("uwpx-push-server: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match args.command {
        Command::Help => return print_out(HELP),
        Command::Version => {
            return print_out(&format!("uwpx-push-server {}\n", env!("CARGO_PKG_VERSION")));
        }
        _ => {}
    }
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}", config_error(&e, &args));
            return ExitCode::from(2);
        }
    };
    if let Command::CheckConfig = args.command {
        for w in &config.warnings {
            eprintln!("uwpx-push-server: warning: {w}");
        }
        return print_out(&format!("{}: OK\n{config:#?}\n", args.config.display()));
    }
    let log_file = match logging::init(&config.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("uwpx-push-server: {e}");
            return ExitCode::from(2);
        }
    };
    for w in &config.warnings {
        log::warn!("{w}");
    }
    let result = match &args.command {
        Command::Stats { devices } => admin::stats(&config, *devices),
        Command::TestPush(id) => admin::test_push(&config, id),
        Command::RemoveDevice(id) => admin::remove_device(&config, id),
        Command::MigrateDb(file) => admin::migrate_db(&config, file),
        _ => return run(&config, log_file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uwpx-push-server: {e}");
            ExitCode::from(1)
        }
    }
}

/// Runs the server until SIGINT or SIGTERM; SIGHUP reopens `log.file`.
fn run(config: &Config, log_file: Option<LogFile>) -> ExitCode {
    // Installed before the app starts, so that a SIGHUP from logrotate right after the
    // start does not kill the process (SIGHUP's default action).
    let mut signals = match Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot install the signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let handle = signals.handle();
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
    let thread = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stops = 0;
            for signal in signals.forever() {
                if signal == SIGHUP {
                    reopen(log_file.as_ref());
                    continue;
                }
                stops += 1;
                if stops > 1 {
                    eprintln!("uwpx-push-server: second signal, exiting now");
                    std::process::exit(130);
                }
                let _ = tx.try_send(());
            }
        });
    let thread = match thread {
        Ok(t) => t,
        Err(e) => {
            log::error!("cannot start the signal thread: {e}");
            app.stop();
            return ExitCode::from(1);
        }
    };
    let _ = rx.recv();
    app.stop();
    handle.close();
    if thread.join().is_err() {
        log::error!("the signal thread panicked");
    }
    ExitCode::SUCCESS
}

/// SIGHUP: logrotate has moved `log.file` away; write to a new file at its path.
fn reopen(log_file: Option<&LogFile>) {
    match log_file {
        None => log::info!("SIGHUP: no log.file to reopen"),
        Some(f) => match f.reopen() {
            Ok(()) => log::info!("log: reopened {} (SIGHUP)", f.path().display()),
            Err(e) => log::error!(
                "log: cannot reopen {} on SIGHUP, still writing to the old file: {e}",
                f.path().display()
            ),
        },
    }
}

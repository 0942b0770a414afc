//! `usdcop-dr`: parse, run, map the result to an exit code.

mod cli;

use clap::Parser;

fn main() {
    limit_malloc_arenas();
    let args = cli::args::Cli::parse();
    init_logging(args.verbose);
    let json = args.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("usdcop-dr: error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    // SIGINT/SIGTERM remove this run's decrypted spools and temporary
    // files, then exit 130/143 (usdcop_dr::scratch).
    let code = match runtime.block_on(async {
        usdcop_dr::scratch::handle_signals(move |signal, code, removed| {
            let message = format!(
                "stopped by {signal}; removed {removed} temporary file(s) or director(ies) of this run"
            );
            // Printed from a thread of its own, given a second: the main
            // flow may hold the stdout lock, blocked on a full pipe (a
            // stopped `restore --stdout | …` reader), and must not keep
            // the process from exiting.
            let (done, wait) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                eprintln!("usdcop-dr: {message}; exit {code}");
                if json {
                    let v = serde_json::json!({"error": {"kind": "interrupted", "message": message, "hint": null, "exit_code": code}});
                    println!("{v}");
                }
                let _ = done.send(());
            });
            let _ = wait.recv_timeout(std::time::Duration::from_secs(1));
        })?;
        let result = cli::run(args).await;
        // A signal arrived: its handler is cleaning up (which may itself
        // end the command, e.g. a dropped scratch database) and exits with
        // 130/143 when done; this run's own end must not win the race.
        if usdcop_dr::scratch::stopping() {
            std::future::pending::<()>().await;
        }
        result
    }) {
        Ok(code) => code,
        // A closed pipe (`restore --stdout | head`) is not a failure.
        Err(e) if e.kind() == usdcop_dr::ErrorKind::Interrupted => 0,
        Err(e) => {
            cli::report_error(&e, json);
            e.exit_code()
        }
    };
    // Tasks still running now (the others of a restore that stopped on an
    // error) are dropped with the runtime, before their guards could
    // remove what they wrote: remove it here, and let no new file appear.
    usdcop_dr::scratch::remove_all();
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
}

/// Crates whose logs stay off without -v: the AWS SDK's credential chain
/// logs each failed instance-metadata attempt as a WARN with multi-KiB
/// debug structs, and every failure that matters reaches the user as our
/// own error line anyway. (Targets match by prefix.)
const QUIET_UNLESS_VERBOSE: &[&str] = &[
    "aws_config",
    "aws_credential_types",
    "aws_runtime",
    "aws_sdk",
    "aws_sigv4",
    "aws_smithy",
    "hyper",
    "h2",
    "rustls",
];

/// The log filter: USDCOP_DR_LOG if set, else by -v.
fn log_filter(verbose: u8) -> String {
    match verbose {
        0 => {
            let mut f = "warn".to_owned();
            for c in QUIET_UNLESS_VERBOSE {
                f.push_str(&format!(",{c}=off"));
            }
            f
        }
        1 => "info".to_owned(),
        _ => "debug".to_owned(),
    }
}

fn init_logging(verbose: u8) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("USDCOP_DR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_filter(verbose)));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// glibc gives each thread that allocates its own arena (up to 8 per
/// core) and each arena keeps memory it freed; with chunk-sized buffers
/// moving between pipeline and tokio blocking threads that is tens of MiB
/// of idle heap. Two arenas keep peak RSS near what is really in use
/// (restore: ~38 MiB instead of 45–75 MiB) at no measurable speed cost.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

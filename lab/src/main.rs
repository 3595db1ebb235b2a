//! `reloadscope-lab`: the agent on a lab node, with a live table; and, as the hidden
//! `consumer` command, the process inside each lab container.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use reloadscope::logging::{LogFormat, init_logging};
use reloadscope_lab::{ConsumerArgs, LabArgs};
use tracing::error;

/// Runs the reloadscope agent against a lab node: a kubelet-style tree on tmpfs and
/// disk, a writer making the kubelet's atomic updates on a schedule, consumer
/// containers in their own cgroups and mount namespaces, a test Kubernetes API server,
/// and a live table of what the agent reports. Needs root. A test tool: it is not in
/// the agent's image.
#[derive(Parser)]
#[command(version, about, long_about = None, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    lab: LabArgs,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log level, or a tracing filter such as `info,reloadscope::walker=debug`.
    #[arg(long, global = true, default_value = "info", env = "RELOADSCOPE_LOG")]
    log_level: String,
}

#[derive(Subcommand)]
enum Command {
    /// The process inside a lab container: started by the lab, not by hand.
    #[command(hide = true)]
    Consumer(ConsumerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(cli.log_format, &cli.log_level) {
        eprintln!("reloadscope-lab: {e:#}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        // Before any runtime starts its threads: the consumer enters a mount namespace
        // of its own, which must hold the whole (single-threaded) process.
        Some(Command::Consumer(args)) => reloadscope_lab::consumer_main(args),
        None => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(reloadscope_lab::run(cli.lab))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

//! `reloadscope-consumer`: one strategy of the `lab_consumer` library as a container's
//! only process, logging its opens on stdout. See [`LONG_ABOUT`].

use std::{
    io::{self, Write as _},
    os::fd::{AsRawFd as _, BorrowedFd},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context as _;
use clap::Parser;
use lab_consumer::{Host, Open, READY, Strategy, Target, Wake, wait};
use nix::sys::{
    signal::{SigSet, Signal},
    signalfd::{SfdFlags, SignalFd},
};

const LONG_ABOUT: &str = "\
Reads a mounted ConfigMap or Secret file the way one kind of application does, and
prints a line on stdout for every open of it: a test consumer for a real pod, whose
reloads the reloadscope agent on the node should measure.

The strategy says when the file is read again: on an inotify event (the right one, or
one that never comes on these volumes), on a timer, or never. The file is a key of a
whole-volume mount (/etc/app/key, a symlink to ..data/key; its directory is the volume)
or a subPath file mount.

Stdout, one line per event:
  open <unix nanos> <head>   an open of the file: the wall-clock time taken right before
                             open(2), then its first 32 bytes in hex (- when empty), or
                             !<errno> when the open or the read failed
  ready                      after the first open, once the watch is in place

SIGHUP makes the sighup-reloader strategy read the file again; the other strategies
ignore it.

It runs until SIGTERM or SIGINT (handled: as a container's PID 1 it would otherwise
ignore them), then exits 0. It never exits on its own otherwise: an error (a watch that
cannot be added, stdout closed) is printed on stderr and it exits 1.";

/// Reads a mounted ConfigMap or Secret file as one kind of application does, and prints
/// every open of it on stdout.
#[derive(Parser, Debug)]
#[command(name = "reloadscope-consumer", version, long_about = LONG_ABOUT)]
struct Args {
    /// How the file is watched or re-read.
    #[arg(long, value_enum, value_name = "NAME")]
    strategy: Strategy,
    /// The file as the container sees it: a key of a whole-volume mount
    /// (/etc/app/key), or a subPath file mount.
    #[arg(long, value_name = "PATH")]
    file: PathBuf,
    /// Seconds between two reads (timer-poller only).
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    period: f64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reloadscope-consumer: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let target = target(args)?;
    // Blocked, the signals wait in the signalfd, which every wait polls. PID 1 of a
    // pid namespace never gets a signal whose action is the default; a blocked one is
    // queued all the same.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGHUP);
    signals
        .thread_block()
        .context("block SIGTERM, SIGINT and SIGHUP")?;
    let signals = SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("signalfd")?;
    let mut host = Stdout { signals };
    args.strategy.run(&target, &mut host)
}

/// The file and the directory it is in (the volume, for a whole-volume mount).
fn target(args: &Args) -> anyhow::Result<Target> {
    let period = Duration::try_from_secs_f64(args.period)
        .map_err(|_| anyhow::anyhow!("--period {}: not a duration in seconds", args.period))?;
    // No name: `/`, empty, or ending in `..`.
    if args.file.file_name().is_none() {
        anyhow::bail!("--file {:?}: not a file path", args.file);
    }
    let dir = match args.file.parent() {
        Some(dir) if dir != Path::new("") => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok(Target {
        file: args.file.clone(),
        dir,
        period,
    })
}

/// Opens and `ready` on stdout, one write(2) each; stops on SIGTERM or SIGINT, hangs
/// up on SIGHUP.
struct Stdout {
    signals: SignalFd,
}

impl Stdout {
    fn line(&mut self, line: &str) -> anyhow::Result<()> {
        let mut out = io::stdout().lock();
        out.write_all(line.as_bytes())
            .and_then(|()| out.flush())
            .context("write to stdout")
    }
}

impl Host for Stdout {
    fn log_open(&mut self, open: &Open) -> anyhow::Result<()> {
        self.line(&open.line())
    }

    fn ready(&mut self) -> anyhow::Result<()> {
        self.line(&format!("{READY}\n"))
    }

    fn wait(
        &mut self,
        fd: Option<BorrowedFd<'_>>,
        timeout: Option<Duration>,
    ) -> anyhow::Result<Wake> {
        let mut fds = vec![wait::pollfd(self.signals.as_raw_fd())];
        fds.extend(fd.map(|fd| wait::pollfd(fd.as_raw_fd())));
        wait::poll(&mut fds, timeout).context("poll")?;
        // What was queued before the signal is handled first.
        if fds.get(1).is_some_and(wait::ready) {
            return Ok(Wake::Readable);
        }
        if !wait::ready(&fds[0]) {
            return Ok(Wake::Idle);
        }
        match self.signals.read_signal().context("read signalfd")? {
            Some(info) if info.ssi_signo == Signal::SIGHUP as u32 => Ok(Wake::Hangup),
            Some(info) => {
                let name =
                    Signal::try_from(info.ssi_signo as i32).map_or("a signal", Signal::as_str);
                eprintln!("reloadscope-consumer: {name}, exiting");
                Ok(Wake::Stop)
            }
            None => Ok(Wake::Idle),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("reloadscope-consumer").chain(args.iter().copied()))
    }

    #[test]
    fn cli_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn the_dir_is_the_files_parent() {
        let args = parse(&["--strategy", "data-dir-watcher", "--file", "/etc/app/key"]).unwrap();
        assert_eq!(args.strategy, Strategy::DataDirWatcher);
        let t = target(&args).unwrap();
        assert_eq!(t.file, Path::new("/etc/app/key"));
        assert_eq!(t.dir, Path::new("/etc/app"));
        assert_eq!(t.period, Duration::from_secs(1));

        let args = parse(&["--strategy=timer-poller", "--file=key", "--period=0.25"]).unwrap();
        let t = target(&args).unwrap();
        assert_eq!(t.dir, Path::new("."));
        assert_eq!(t.period, Duration::from_millis(250));
    }

    #[test]
    fn bad_arguments_are_refused() {
        for args in [
            &["--file", "/etc/app/key"][..],
            &["--strategy", "data-dir-watcher"],
            &["--strategy", "inotify", "--file", "/etc/app/key"],
            &["--strategy", "read-once", "--file", "/k", "--period", "x"],
            &["--strategy", "read-once", "--file", ""],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
        for file in ["/", "/etc/.."] {
            let args = parse(&["--strategy", "read-once", "--file", file]).unwrap();
            assert!(target(&args).is_err(), "{file:?}");
        }
        let args = parse(&["--strategy", "read-once", "--file", "/k", "--period=-1"]).unwrap();
        assert!(target(&args).is_err());
    }

    #[test]
    fn help_lists_every_strategy_and_the_output() {
        let help = Args::command().render_long_help().to_string();
        for s in Strategy::ALL {
            assert!(help.contains(s.name()), "{} missing from --help", s.name());
        }
        for what in ["open <unix nanos> <head>", "ready", "SIGTERM"] {
            assert!(help.contains(what), "{what:?} missing from --help");
        }
    }
}

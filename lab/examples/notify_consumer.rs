//! A config consumer built on `notify`, the most used Rust file-watching crate, used
//! the way most applications use it on a mounted config file: a `RecommendedWatcher`
//! (inotify on Linux) on the file itself, `RecursiveMode::NonRecursive`, and a re-read
//! of the file on each event.
//!
//! ```text
//! notify_consumer <file>
//! ```
//!
//! Prints `watching <file>` once the watch is in place, then one line per read of the
//! file: `reload <n> <event kind> <content>` (`n` counts from 0, the read at start;
//! `start` is its kind; `!<error>` instead of the content when it cannot be read).
//!
//! It skips the open events (`Access(Open)`) that notify also reports: its own re-read
//! opens the file, and reloading on that would loop forever. Applications filter them
//! out for the same reason. The lab runs it as a container's process
//! (`ContainerSpec::command`) to see what such a watcher makes of a ConfigMap update.

use std::{fs, path::Path, process::ExitCode, sync::mpsc};

use notify::{
    Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _, event::AccessKind,
};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(path), None) = (args.next(), args.next()) else {
        eprintln!("usage: notify_consumer <file>");
        return ExitCode::from(2);
    };
    match run(Path::new(&path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("notify_consumer: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &Path) -> notify::Result<()> {
    let (tx, rx) = mpsc::channel::<notify::Result<Event>>();
    let mut watcher: RecommendedWatcher = notify::recommended_watcher(tx)?;
    watcher.watch(path, RecursiveMode::NonRecursive)?;
    println!("watching {}", path.display());
    let mut n = 0u64;
    reload(path, n, "start");
    // Ends when the watcher goes, which it does not before the process.
    for res in rx {
        match res {
            Ok(ev) if matches!(ev.kind, EventKind::Access(AccessKind::Open(_))) => {}
            Ok(ev) => {
                n += 1;
                reload(path, n, &format!("{:?}", ev.kind));
            }
            Err(e) => eprintln!("watch error: {e}"),
        }
    }
    Ok(())
}

/// Reads the whole file, as a reload does, and says what it read.
fn reload(path: &Path, n: u64, kind: &str) {
    match fs::read_to_string(path) {
        Ok(content) => println!("reload {n} {kind} {}", content.trim_end()),
        Err(e) => println!("reload {n} {kind} !{e}"),
    }
}

//! Every strategy, in a thread, on a kubelet-style volume in a temp dir (no root
//! needed): which updates it reopens the file for, and what it reads then.

mod common;

use std::{
    os::{
        fd::{AsRawFd as _, BorrowedFd},
        unix::net::UnixStream,
    },
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use common::{DEADLINE, Volume, next_matching};
use lab_consumer::{Host, Open, Strategy, Target, Wake, wait};

#[derive(Debug)]
enum Said {
    Open(Open),
    Ready,
}

/// A host that sends what the strategy says to the test, and stops once the test
/// drops its end of `stop` and nothing else is left to read.
struct Recorder {
    said: mpsc::Sender<Said>,
    stop: UnixStream,
}

impl Host for Recorder {
    fn log_open(&mut self, open: &Open) -> anyhow::Result<()> {
        let _ = self.said.send(Said::Open(open.clone()));
        Ok(())
    }

    fn ready(&mut self) -> anyhow::Result<()> {
        let _ = self.said.send(Said::Ready);
        Ok(())
    }

    fn wait(
        &mut self,
        fd: Option<BorrowedFd<'_>>,
        timeout: Option<Duration>,
    ) -> anyhow::Result<Wake> {
        let mut fds = vec![wait::pollfd(self.stop.as_raw_fd())];
        fds.extend(fd.map(|fd| wait::pollfd(fd.as_raw_fd())));
        wait::poll(&mut fds, timeout)?;
        Ok(if fds.get(1).is_some_and(wait::ready) {
            Wake::Readable
        } else if wait::ready(&fds[0]) {
            Wake::Stop
        } else {
            Wake::Idle
        })
    }
}

struct Running {
    strategy: Strategy,
    said: mpsc::Receiver<Said>,
    done: mpsc::Receiver<anyhow::Result<()>>,
    stop: Option<UnixStream>,
    /// The heads of every open so far, in order.
    heads: Vec<Vec<u8>>,
}

impl Running {
    fn start(strategy: Strategy, volume: &Volume) -> Running {
        let target = Target {
            file: volume.file(),
            dir: volume.dir().to_path_buf(),
            period: Duration::from_millis(10),
        };
        let (stop, stop_end) = UnixStream::pair().unwrap();
        let (said_tx, said) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        thread::spawn(move || {
            let mut host = Recorder {
                said: said_tx,
                stop: stop_end,
            };
            let _ = done_tx.send(strategy.run(&target, &mut host));
        });
        let mut running = Running {
            strategy,
            said,
            done,
            stop: Some(stop),
            heads: Vec::new(),
        };
        let deadline = Instant::now() + DEADLINE;
        let heads = &mut running.heads;
        next_matching(&running.said, deadline, |said| match said {
            Said::Ready => true,
            Said::Open(open) => {
                heads.push(open.head.clone().expect("the file reads"));
                false
            }
        })
        .unwrap_or_else(|e| panic!("{strategy:?} not ready: {e}"));
        assert_eq!(
            running.heads,
            [b"v1"],
            "{strategy:?}'s first open, before ready"
        );
        running
    }

    /// Takes in what was said so far.
    fn drain(&mut self) {
        while let Ok(said) = self.said.try_recv() {
            self.take(said);
        }
    }

    fn take(&mut self, said: Said) {
        match said {
            Said::Open(open) => self.heads.push(open.head.expect("the file reads")),
            Said::Ready => panic!("{:?} said ready twice", self.strategy),
        }
    }

    /// Waits for an open that read `head`.
    fn wait_for(&mut self, head: &[u8]) {
        let deadline = Instant::now() + DEADLINE;
        while !self.heads.iter().any(|h| h == head) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.said.recv_timeout(left) {
                Ok(said) => self.take(said),
                Err(e) => panic!(
                    "{:?} never read {:?} ({e}); it read {:?}",
                    self.strategy,
                    String::from_utf8_lossy(head),
                    self.heads
                ),
            }
        }
    }

    /// Stops it once it has handled what the updates queued, and returns the heads of
    /// every open it made.
    fn stop(mut self) -> Vec<Vec<u8>> {
        drop(self.stop.take());
        let result = self
            .done
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|e| panic!("{:?} did not stop: {e}", self.strategy));
        result.unwrap_or_else(|e| panic!("{:?} failed: {e:#}", self.strategy));
        self.drain();
        self.heads
    }
}

/// The heads an inotify strategy reopens the file for after two updates (v2, v3), or
/// `None` for the poller (it reads on its own schedule, whatever the updates).
fn reopens(strategy: Strategy) -> Option<&'static [&'static [u8]]> {
    match strategy {
        Strategy::DataDirWatcher | Strategy::FileRewatcher => Some(&[b"v2", b"v3"]),
        Strategy::FileWatcherNoRewatch => Some(&[b"v2"]),
        Strategy::TimerPoller => None,
        Strategy::NaiveModify
        | Strategy::DontFollow
        | Strategy::TimestampedDirWatcher
        | Strategy::ReadOnce
        | Strategy::SighupReloader => Some(&[]),
    }
}

#[test]
fn each_strategy_reopens_for_the_updates_it_sees() {
    for strategy in Strategy::ALL {
        let mut volume = Volume::new(b"v1");
        let mut running = Running::start(strategy, &volume);
        let expected = reopens(strategy);
        for content in [&b"v2"[..], b"v3"] {
            volume.swap(content);
            // An update it sees is waited for before the next one, so that the reopen
            // reads its content; one it does not see is queued (inotify queues events
            // within the update's calls) and handled before the stop.
            if expected.is_none_or(|heads| heads.contains(&content)) {
                running.wait_for(content);
            }
        }
        let heads = running.stop();
        match expected {
            Some(expected) => assert_eq!(heads[1..], *expected, "{strategy:?}"),
            None => {
                let v2 = heads.iter().position(|h| h == b"v2").unwrap();
                let v3 = heads.iter().position(|h| h == b"v3").unwrap();
                assert!(heads[..v2].iter().all(|h| h == b"v1"), "{heads:?}");
                assert!(heads[v2..v3].iter().all(|h| h == b"v2"), "{heads:?}");
            }
        }
        let every_update = expected.is_none_or(|heads| heads.len() == 2);
        assert_eq!(strategy.gets_updates(), every_update, "{strategy:?}");
    }
}

#[test]
fn a_watch_that_cannot_be_added_is_an_error() {
    let volume = Volume::new(b"v1");
    let missing = volume.dir().join("missing");
    for strategy in [Strategy::DataDirWatcher, Strategy::NaiveModify] {
        let target = Target {
            file: missing.join("key"),
            dir: missing.clone(),
            period: Duration::from_secs(1),
        };
        let (_stop, stop_end) = UnixStream::pair().unwrap();
        let (said, _said) = mpsc::channel();
        let mut host = Recorder {
            said,
            stop: stop_end,
        };
        let err = strategy.run(&target, &mut host).unwrap_err();
        assert!(format!("{err:#}").contains("inotify_add_watch"), "{err:#}");
    }
}

//! The fake API server's listener: plain TCP whose connections the tests can cut, as
//! a network failure or an API server restart does.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, Ordering::SeqCst},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_util::task::AtomicWaker;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};

#[derive(Debug, Default)]
struct Cut {
    cut: AtomicBool,
    read: AtomicWaker,
    write: AtomicWaker,
}

impl Cut {
    fn cut(&self) {
        self.cut.store(true, SeqCst);
        self.read.wake();
        self.write.wake();
    }

    fn is_cut(&self) -> bool {
        self.cut.load(SeqCst)
    }
}

/// The open connections, to cut them; and whether new ones are refused.
#[derive(Debug, Default)]
pub struct Connections {
    open: Mutex<Vec<Weak<Cut>>>,
    refuse: AtomicBool,
}

impl Connections {
    /// Cuts every open connection; returns how many.
    pub fn cut_all(&self) -> usize {
        let open = std::mem::take(&mut *self.open.lock().expect("connections lock"));
        open.iter()
            .filter_map(Weak::upgrade)
            .inspect(|c| c.cut())
            .count()
    }

    /// While set, every new connection is closed as soon as it is accepted.
    pub fn refuse(&self, on: bool) {
        self.refuse.store(on, SeqCst);
    }

    fn add(&self) -> Arc<Cut> {
        let c = Arc::new(Cut::default());
        let mut open = self.open.lock().expect("connections lock");
        open.retain(|w| w.strong_count() > 0);
        open.push(Arc::downgrade(&c));
        c
    }
}

/// A TCP listener whose connections [`Connections`] can cut.
pub struct CutListener {
    pub listener: TcpListener,
    pub conns: Arc<Connections>,
}

impl axum::serve::Listener for CutListener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    if self.conns.refuse.load(SeqCst) {
                        // Closed at once: the client sees its connection reset.
                        let _ = stream.set_zero_linger();
                        drop(stream);
                        continue;
                    }
                    let cut = self.conns.add();
                    return (Conn { stream, cut }, addr);
                }
                // Out of file descriptors and the like: try again shortly.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// An accepted connection: fails every read and write once cut, which makes the HTTP
/// server drop it (closing the socket) mid-request or mid-stream.
pub struct Conn {
    stream: TcpStream,
    cut: Arc<Cut>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // A cut connection ends with a reset, as a network failure shows.
        if self.cut.is_cut() {
            let _ = self.stream.set_zero_linger();
        }
    }
}

fn cut_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection cut by the test",
    )
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.cut.read.register(cx.waker());
        if self.cut.is_cut() {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.cut.write.register(cx.waker());
        if self.cut.is_cut() {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.cut.is_cut() {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

//! Network latency in front of a server: a TCP relay that delivers every byte from the client
//! to the server `delay` after it arrived, and the server's bytes back at once. Each request
//! thus takes `delay` longer, as on a network with that round-trip time, and nothing else is
//! added: no HTTP is parsed, so there is no extra hop of the kind an HTTP proxy would be.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The relay; it stops when the bench process exits.
#[derive(Debug)]
pub(crate) struct LatencyRelay {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl LatencyRelay {
    /// Listens on a free loopback port and relays every connection to `upstream`.
    pub(crate) async fn start(upstream: SocketAddr, delay: Duration) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicUsize::new(0));
        let opened = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                opened.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(relay(client, upstream, delay));
            }
        });
        Ok(LatencyRelay { addr, connections })
    }

    /// The base URL to use instead of the server's.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far (a client that opened one per request would pay a
    /// handshake's round trip more each time on a real network, which this relay does not add).
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

async fn relay(client: TcpStream, upstream: SocketAddr, delay: Duration) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    drop(client.set_nodelay(true));
    drop(server.set_nodelay(true));
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Chunks wait here with their arrival time, so one chunk's wait never delays the reading
    // of the next: the pipe holds each byte `delay`, not the sum of the delays before it.
    let (chunks, mut pending) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buffer = vec![0_u8; 64 * 1024];
        loop {
            match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if chunks.send((Instant::now(), buffer[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((arrived, chunk)) = pending.recv().await {
            hold_until(arrived + delay).await;
            if server_write.write_all(&chunk).await.is_err() {
                break;
            }
        }
        drop(server_write.shutdown().await);
    };
    let back = async move {
        drop(tokio::io::copy(&mut server_read, &mut client_write).await);
        drop(client_write.shutdown().await);
    };
    tokio::join!(reader, writer, back);
}

/// Waits until `deadline`, to within tens of microseconds. tokio's timer counts whole
/// milliseconds and rounds every sleep up (a 20 ms sleep took about 21.7 ms here); a blocking
/// thread's sleep ends on time.
async fn hold_until(deadline: Instant) {
    let remaining = deadline.saturating_duration_since(Instant::now());
    if !remaining.is_zero() {
        drop(tokio::task::spawn_blocking(move || std::thread::sleep(remaining)).await);
    }
}

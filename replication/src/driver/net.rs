//! Network side of the driver: the listener (lower node id) or connector (higher node
//! id), link authentication of every new connection, and one reader and one writer task
//! per live connection.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Notify};

use crate::auth::{Authenticator, AUTH_FRAME_BYTES, CHALLENGE_BYTES};
use crate::msg::Message;
use crate::wire::{Decoder, Encoder, DEFAULT_MAX_PAYLOAD_BYTES};

/// What the network tasks tell the owner.
#[derive(Debug)]
pub(super) enum NetEvent {
    /// A connection passed authentication.
    Authenticated {
        stream: TcpStream,
        leftover: Vec<u8>,
        peer: SocketAddr,
    },
    /// A connection attempt or an incoming connection failed before authentication
    /// completed.
    Failed { reason: String },
    /// A message arrived on a connection.
    Message { conn: u64, msg: Message },
    /// The connection ended (EOF or error).
    Down { conn: u64, reason: String },
    /// The peer sent bytes that do not decode.
    ProtocolError { conn: u64, reason: String },
}

/// Identity and secret for authenticating connections.
#[derive(Clone)]
pub(super) struct AuthParams {
    pub node_id: u8,
    pub peer_node_id: u8,
    pub volume_uuid: [u8; 16],
    pub secret: Arc<Vec<u8>>,
    pub timeout: Duration,
}

impl std::fmt::Debug for AuthParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthParams")
            .field("node_id", &self.node_id)
            .field("peer_node_id", &self.peer_node_id)
            .finish_non_exhaustive()
    }
}

/// Run the authentication handshake on `stream`; returns the bytes read past it.
async fn authenticate(stream: &mut TcpStream, p: &AuthParams) -> Result<Vec<u8>, String> {
    let mut challenge = [0u8; CHALLENGE_BYTES];
    getrandom::getrandom(&mut challenge).map_err(|e| format!("no random challenge: {e}"))?;
    let mut auth = Authenticator::new(
        p.node_id,
        p.peer_node_id,
        p.volume_uuid,
        &p.secret,
        challenge,
    )
    .map_err(|e| e.to_string())?;
    stream
        .write_all(&auth.initial_bytes())
        .await
        .map_err(|e| format!("sending the authentication hello: {e}"))?;
    // The peer sends exactly two frames (hello, response). Feeding them one at a time
    // makes sure our response to its hello is sent even when its response then fails
    // to verify, so both ends learn why.
    let mut frame = [0u8; AUTH_FRAME_BYTES];
    loop {
        stream.read_exact(&mut frame).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                "the peer closed the connection during authentication (it may have refused \
                 us, or already has a connection)"
                    .to_string()
            } else {
                format!("during authentication: {e}")
            }
        })?;
        let progress = auth.feed(&frame).map_err(|e| e.to_string())?;
        if !progress.send.is_empty() {
            stream
                .write_all(&progress.send)
                .await
                .map_err(|e| format!("sending the authentication response: {e}"))?;
        }
        if let Some(done) = progress.done {
            return Ok(done.leftover);
        }
    }
}

/// Authenticate `stream` within the timeout and report the outcome to the owner.
async fn handshake_and_report(
    mut stream: TcpStream,
    peer: SocketAddr,
    p: AuthParams,
    events: mpsc::Sender<NetEvent>,
) -> bool {
    let _ = stream.set_nodelay(true);
    let r = tokio::time::timeout(p.timeout, authenticate(&mut stream, &p)).await;
    let ev = match r {
        Ok(Ok(leftover)) => NetEvent::Authenticated {
            stream,
            leftover,
            peer,
        },
        Ok(Err(reason)) => NetEvent::Failed {
            reason: format!("{peer}: {reason}"),
        },
        Err(_) => NetEvent::Failed {
            reason: format!(
                "{peer}: authentication did not complete within {} ms",
                p.timeout.as_millis()
            ),
        },
    };
    let ok = matches!(ev, NetEvent::Authenticated { .. });
    let _ = events.send(ev).await;
    ok
}

/// Accept connections while the owner wants one (`need`); others are closed at once.
pub(super) async fn listen(
    listener: TcpListener,
    need: watch::Receiver<bool>,
    p: AuthParams,
    events: mpsc::Sender<NetEvent>,
) {
    // Handshakes in progress at most (a port scanner must not block the real peer).
    let slots = Arc::new(tokio::sync::Semaphore::new(4));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "replication accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !*need.borrow() {
            tracing::debug!(%peer, "replication connection refused: not connecting now (or a connection is already established)");
            drop(stream);
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "replication connection refused: too many handshakes in progress");
            continue;
        };
        let (p, events) = (p.clone(), events.clone());
        tokio::spawn(async move {
            handshake_and_report(stream, peer, p, events).await;
            drop(permit);
        });
    }
}

/// Connect to the peer every `interval` while the owner wants a connection.
pub(super) async fn connect_loop(
    local: SocketAddr,
    peer: SocketAddr,
    interval: Duration,
    mut need: watch::Receiver<bool>,
    p: AuthParams,
    events: mpsc::Sender<NetEvent>,
) {
    loop {
        if need.wait_for(|v| *v).await.is_err() {
            return;
        }
        let attempt = async {
            let sock = if peer.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }?;
            // Connect from this node's replication IP (any port).
            if local.is_ipv4() == peer.is_ipv4() && !local.ip().is_unspecified() {
                sock.bind(SocketAddr::new(local.ip(), 0))?;
            }
            sock.connect(peer).await
        };
        match tokio::time::timeout(p.timeout, attempt).await {
            Ok(Ok(stream)) => {
                handshake_and_report(stream, peer, p.clone(), events.clone()).await;
            }
            Ok(Err(e)) => {
                let _ = events
                    .send(NetEvent::Failed {
                        reason: format!("{peer}: connect failed: {e}"),
                    })
                    .await;
            }
            Err(_) => {
                let _ = events
                    .send(NetEvent::Failed {
                        reason: format!(
                            "{peer}: connect did not complete within {} ms",
                            p.timeout.as_millis()
                        ),
                    })
                    .await;
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// Read frames from the peer and pass them to the owner.
pub(super) async fn reader(
    conn: u64,
    mut rd: OwnedReadHalf,
    leftover: Vec<u8>,
    events: mpsc::Sender<NetEvent>,
) {
    let mut dec = Decoder::new(DEFAULT_MAX_PAYLOAD_BYTES);
    dec.feed(&leftover);
    loop {
        loop {
            match dec.next_message() {
                Ok(Some((_, msg))) => {
                    if events.send(NetEvent::Message { conn, msg }).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = events
                        .send(NetEvent::ProtocolError {
                            conn,
                            reason: e.to_string(),
                        })
                        .await;
                    return;
                }
            }
        }
        // Straight into the decoder's buffer: no copy, and a large payload gets one
        // allocation of its size.
        match rd.read_buf(dec.read_buffer(64 * 1024)).await {
            Ok(0) => {
                let _ = events
                    .send(NetEvent::Down {
                        conn,
                        reason: "the peer closed the connection".into(),
                    })
                    .await;
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = events
                    .send(NetEvent::Down {
                        conn,
                        reason: format!("connection error: {e}"),
                    })
                    .await;
                return;
            }
        }
    }
}

#[derive(Debug, Default)]
struct Queues {
    prio: VecDeque<Message>,
    bulk: VecDeque<Message>,
    closing: bool,
}

/// The send queue of one connection: the owner pushes without waiting; the writer task
/// sends Ping/PingAck first, then everything else in order.
#[derive(Debug, Default)]
pub(super) struct SendQueue {
    q: Mutex<Queues>,
    ready: Notify,
    /// Signalled when the writer has sent something (room for more).
    pub space: Notify,
    queued_bytes: AtomicU64,
}

fn lock(m: &Mutex<Queues>) -> std::sync::MutexGuard<'_, Queues> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn cost(m: &Message) -> u64 {
    m.payload_bytes() + 64
}

impl SendQueue {
    /// Queue a message.
    pub fn push(&self, msg: Message) {
        {
            let mut q = lock(&self.q);
            if q.closing {
                return;
            }
            self.queued_bytes.fetch_add(cost(&msg), Ordering::AcqRel);
            if matches!(msg, Message::Ping | Message::PingAck) {
                q.prio.push_back(msg);
            } else {
                q.bulk.push_back(msg);
            }
        }
        self.ready.notify_one();
    }

    /// Send what is queued, then close.
    pub fn close(&self) {
        lock(&self.q).closing = true;
        self.ready.notify_one();
    }

    /// Bytes (payload plus a per-message estimate) waiting to be sent.
    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes.load(Ordering::Acquire)
    }
}

/// Write queued messages to the peer until the queue is closed or the socket fails.
/// Write every chunk, in order, with vectored writes.
async fn write_chunks(
    wr: &mut OwnedWriteHalf,
    chunks: &mut VecDeque<Bytes>,
) -> std::io::Result<()> {
    use bytes::Buf;
    while !chunks.is_empty() {
        let slices: Vec<std::io::IoSlice<'_>> = chunks
            .iter()
            .take(64)
            .map(|c| std::io::IoSlice::new(c))
            .collect();
        let mut n = wr.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let Some(front) = chunks.front_mut() else {
                break;
            };
            if front.len() <= n {
                n -= front.len();
                chunks.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
    Ok(())
}

pub(super) async fn writer(
    conn: u64,
    mut wr: OwnedWriteHalf,
    q: Arc<SendQueue>,
    events: mpsc::Sender<NetEvent>,
) {
    const BATCH_BYTES: usize = 256 * 1024;
    let mut enc = Encoder::new();
    let mut out = BytesMut::with_capacity(64 * 1024);
    // Frames as a list of chunks: headers and small messages are encoded into `out`,
    // the data of Data/RsData stays in its own buffer and goes out by vectored write.
    let mut chunks: VecDeque<Bytes> = VecDeque::new();
    loop {
        let mut sent_cost = 0;
        let mut batch = 0usize;
        let closing = {
            let mut g = lock(&q.q);
            while batch < BATCH_BYTES {
                let Some(m) = g.prio.pop_front().or_else(|| g.bulk.pop_front()) else {
                    break;
                };
                sent_cost += cost(&m);
                if let Some(tail) = enc.encode_split(&m, &mut out) {
                    batch += tail.len();
                    chunks.push_back(out.split().freeze());
                    chunks.push_back(tail);
                }
                batch += 64;
            }
            g.closing && g.prio.is_empty() && g.bulk.is_empty()
        };
        if !out.is_empty() {
            chunks.push_back(out.split().freeze());
        }
        if chunks.is_empty() {
            if closing {
                break;
            }
            q.ready.notified().await;
            continue;
        }
        let r = write_chunks(&mut wr, &mut chunks).await;
        chunks.clear();
        q.queued_bytes.fetch_sub(sent_cost, Ordering::AcqRel);
        q.space.notify_one();
        if let Err(e) = r {
            let _ = events
                .send(NetEvent::Down {
                    conn,
                    reason: format!("send failed: {e}"),
                })
                .await;
            break;
        }
    }
    let _ = wr.shutdown().await;
}

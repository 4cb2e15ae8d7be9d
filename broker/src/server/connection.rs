//! One client connection: read frames, run requests concurrently, answer in request order.
//!
//! The reader parses each frame and spawns its handler; the writer awaits handlers in the
//! order their requests arrived and writes their responses. At most MAX_PIPELINE requests of
//! one connection are in flight, and every frame's bytes count against the broker-wide
//! in-flight budget until its response is written.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::api;
use crate::broker::Broker;
use crate::protocol::{self, FrameError, Parsed};

/// Requests of one connection in flight at once (librdkafka pipelines up to 5 per broker).
const MAX_PIPELINE: usize = 64;
/// Kafka's connections.max.idle.ms.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// A started frame must arrive within this long.
const FRAME_TIMEOUT: Duration = Duration::from_secs(60);
/// Frame bytes read per step: memory grows with what arrives, not with what the prefix claims.
const READ_STEP: usize = 1 << 20;

use crate::api::Reply;

pub async fn run(stream: TcpStream, peer: SocketAddr, listener: &'static str, broker: Arc<Broker>) {
    let span = tracing::info_span!("conn", %peer);
    let (rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Reply>(MAX_PIPELINE);
    let writer = tokio::spawn(
        async move {
            while let Some(reply) = rx.recv().await {
                match reply.await {
                    Ok(Ok(Some(frame))) => {
                        if let Err(e) = wr.write_all(&frame).await {
                            tracing::debug!(error = %e, "client went away");
                            break;
                        }
                    }
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "closing connection: request failed");
                        break;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "request handler crashed; closing connection");
                        break;
                    }
                }
            }
            let _ = wr.shutdown().await;
        }
        .instrument(span.clone()),
    );
    // PEER: the client's address for handlers that record it (JoinGroup).
    crate::api::PEER
        .scope(
            peer,
            read_loop(
                BufReader::with_capacity(64 * 1024, rd),
                listener,
                &broker,
                tx,
            ),
        )
        .instrument(span)
        .await;
    let _ = writer.await;
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut rd: R,
    listener: &'static str,
    broker: &Arc<Broker>,
    tx: mpsc::Sender<Reply>,
) {
    loop {
        let len = match tokio::time::timeout(IDLE_TIMEOUT, rd.read_i32()).await {
            Err(_) => {
                tracing::debug!("idle connection closed");
                return;
            }
            Ok(Err(_)) => return, // EOF or reset: the client closed.
            Ok(Ok(n)) => n,
        };
        let max = broker.config.max_frame_bytes;
        let Some(len) = usize::try_from(len).ok().filter(|n| *n <= max) else {
            broker.metrics.rejected_frames.inc();
            tracing::warn!(
                length = len,
                max,
                "closing connection: frame length outside 0..={max}"
            );
            return;
        };
        // u32 fits: len <= max_frame_bytes <= i32::MAX.
        let Ok(permit) = Arc::clone(&broker.inflight_bytes)
            .acquire_many_owned(len.max(1) as u32)
            .await
        else {
            return;
        };
        let frame = match tokio::time::timeout(FRAME_TIMEOUT, read_frame(&mut rd, len)).await {
            Ok(Ok(f)) => f,
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::warn!(
                    length = len,
                    "closing connection: frame not received in time"
                );
                return;
            }
        };
        let reply: Reply = match protocol::parse_frame(frame.freeze()) {
            Err(e) => {
                broker.metrics.rejected_frames.inc();
                tracing::warn!(error = %e, "closing connection: bad request");
                return;
            }
            Ok(Parsed::ApiVersionsFallback { correlation_id }) => tokio::spawn(async move {
                api::fallback_response(correlation_id)
                    .map(Some)
                    .map_err(FrameError::BadHeader)
            }),
            Ok(Parsed::Request { header, api, body }) => {
                match api::start(broker, listener, header, api, body).await {
                    Ok(reply) => {
                        // The frame's bytes stay counted until its answer is ready.
                        tokio::spawn(async move {
                            let out = reply.await;
                            drop(permit);
                            out.unwrap_or_else(|e| {
                                Err(FrameError::BadHeader(format!("handler failed: {e}")))
                            })
                        })
                    }
                    Err(e) => {
                        broker.metrics.rejected_frames.inc();
                        tracing::warn!(error = %e, "closing connection: bad request");
                        return;
                    }
                }
            }
        };
        if tx.send(reply).await.is_err() {
            return; // Writer stopped: the connection is closing.
        }
    }
}

async fn read_frame<R: AsyncRead + Unpin>(rd: &mut R, len: usize) -> std::io::Result<BytesMut> {
    let mut buf = BytesMut::with_capacity(len.min(READ_STEP));
    while buf.len() < len {
        let want = (len - buf.len()).min(READ_STEP);
        buf.reserve(want);
        let n = (&mut *rd).take(want as u64).read_buf(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(buf)
}

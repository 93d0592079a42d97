//! A deliberately faulty worker, for tests only (an example, so it never ships
//! in a release binary). It speaks the real protocol through core's
//! `WorkerSession`, but lies about its results:
//!
//! `faulty_worker <URL> <MODE> [--bind IP]`, MODE one of:
//! - `flip`: one element off by 1e-6 of the block's largest magnitude;
//! - `zeros`: all zeros;
//! - `other-block`: the right numbers for the previous block it computed;
//! - `foreign-lease`: a result for a task it was never given;
//! - `wrong-shape`: eight bytes more than the block holds.
//!
//! `--bind` picks its source address (e.g. 127.0.0.2), so a test can ban it
//! without banning honest workers on 127.0.0.1.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use colonnade_core::codec;
use colonnade_core::protocol::{Message, WorkerKind};
use colonnade_core::worker::{WorkerConfig, WorkerSession};
use colonnade_core::DenseMatrix;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (url, mode) = (args[1].clone(), args[2].clone());
    let bind: Option<IpAddr> = args.iter().position(|a| a == "--bind").map(|i| args[i + 1].parse().expect("an IP address"));
    // Reconnect like a real worker, until the test stops us.
    loop {
        if let Err(e) = serve(&url, &mode, bind).await {
            eprintln!("faulty worker: {e}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn serve(url: &str, mode: &str, bind: Option<IpAddr>) -> Result<(), Box<dyn std::error::Error>> {
    let host = url.trim_start_matches("ws://").split('/').next().ok_or("bad URL")?;
    let target: SocketAddr = host.parse()?;
    let socket = match bind {
        Some(ip) => {
            let s = tokio::net::TcpSocket::new_v4()?;
            s.bind(SocketAddr::new(ip, 0))?;
            s.connect(target).await?
        }
        None => tokio::net::TcpStream::connect(target).await?,
    };
    let (ws, _) = tokio_tungstenite::client_async(url, socket).await?;
    let (mut sink, mut stream) = ws.split();
    let mut session = WorkerSession::new(WorkerConfig { slots: 1, ..WorkerConfig::new(WorkerKind::Native, format!("faulty-{mode}")) }, Duration::ZERO);
    let mut previous: Option<DenseMatrix> = None;
    loop {
        while let Some(frame) = session.poll_transmit() {
            sink.send(WsMessage::Binary(colonnade_core::codec::encode_frame(&frame).into())).await?;
        }
        let Some(message) = stream.next().await else { return Ok(()) };
        let WsMessage::Binary(bytes) = message? else { continue };
        session.handle_message(&bytes, Duration::ZERO)?;
        while let Some(task) = session.next_task() {
            let honest = task.compute();
            eprintln!("faulty worker: lying ({mode}) about lease {}", task.lease);
            let lie = match mode {
                "flip" => {
                    let mut c = honest.clone().into_f64();
                    let scale = c.as_slice().iter().fold(0.0f64, |x, v| x.max(v.abs()));
                    let at = (task.lease as usize * 7919) % c.as_slice().len();
                    c.as_mut_slice()[at] += 1e-6 * scale;
                    match honest.dtype() {
                        colonnade_core::Dtype::F64 => DenseMatrix::F64(c),
                        colonnade_core::Dtype::F32 => DenseMatrix::F32(DenseMatrix::F64(c).into_f32()),
                    }
                }
                "zeros" => DenseMatrix::zeros(honest.dtype(), honest.rows(), honest.cols())?,
                "other-block" => match previous.replace(honest.clone()) {
                    Some(old) if old.cols() == honest.cols() => old,
                    _ => honest.clone(), // nothing to copy yet: be honest once
                },
                "foreign-lease" => {
                    let message = Message::ResultChunk { lease: task.lease + 1_000_000, offset: 0, compute_us: 1 };
                    sink.send(WsMessage::Binary(codec::encode(&message, honest.as_bytes()).into())).await?;
                    continue;
                }
                "wrong-shape" => {
                    let mut bytes = honest.as_bytes().to_vec();
                    bytes.extend_from_slice(&[0; 8]);
                    let message = Message::ResultChunk { lease: task.lease, offset: 0, compute_us: 1 };
                    sink.send(WsMessage::Binary(codec::encode(&message, &bytes).into())).await?;
                    continue;
                }
                other => panic!("unknown mode {other}"),
            };
            session.complete(task.lease, lie, Duration::from_millis(1));
        }
    }
}

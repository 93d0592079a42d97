//! A TCP proxy that delays every byte by a fixed time, each way. The network
//! fault tests add latency with it, since this machine's kernel has no netem.
//! For tests only (an example, so it never ships in a release binary).
//!
//! `delay_proxy LISTEN TARGET DELAY_MS`

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, target, delay_ms] = &args[..] else {
        eprintln!("usage: delay_proxy LISTEN TARGET DELAY_MS");
        std::process::exit(2);
    };
    let delay = Duration::from_millis(delay_ms.parse().expect("DELAY_MS: a number of milliseconds"));
    let listener = TcpListener::bind(listen).await.expect("cannot listen");
    println!("proxy listening on {}", listener.local_addr().expect("bound"));
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        let target = target.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(&target).await else { return };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            let ((client_read, client_write), (server_read, server_write)) = (client.into_split(), server.into_split());
            tokio::join!(pipe(client_read, server_write, delay), pipe(server_read, client_write, delay));
        });
    }
}

/// Copies `from` to `to` in order, each piece `delay` after it was read.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((read_at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(read_at + delay).await;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

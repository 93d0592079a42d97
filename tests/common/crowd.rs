//! Many idle workers on one master: connections that say Hello as browser
//! tabs and then only send heartbeats.

use std::time::Duration;

/// `count` connections that say Hello as browser tabs and then only beat,
/// until dropped: a crowd for the dashboard to show.
pub struct Crowd {
    stop: Option<tokio::sync::watch::Sender<bool>>,
    pub joined: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Crowd {
    pub fn start(addr: &str, count: usize) -> Self {
        use colonnade_core::codec::{decode, encode};
        use colonnade_core::protocol::{Message, Token, WorkerKind, PROTOCOL_VERSION};
        use futures_util::{SinkExt, StreamExt};
        use std::sync::atomic::Ordering;
        use tokio_tungstenite::tungstenite::Message as Ws;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let joined = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (url, counter) = (format!("ws://{addr}/ws"), std::sync::Arc::clone(&joined));
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let members: Vec<_> = (0..count)
                    .map(|i| {
                        let (url, mut stopped, counter) = (url.clone(), stopped.clone(), std::sync::Arc::clone(&counter));
                        tokio::spawn(async move {
                            let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else { return };
                            let hello = Message::Hello { protocol: PROTOCOL_VERSION, kind: WorkerKind::Browser, threads: 1, slots: 1, name: format!("crowd-{i}"), token: Token::default(), memory: 1 << 28, flops: 0 };
                            if ws.send(Ws::Binary(encode(&hello, &[]).into())).await.is_err() {
                                return;
                            }
                            let mut beat = tokio::time::interval(Duration::from_secs(2));
                            loop {
                                tokio::select! {
                                    _ = stopped.changed() => return,
                                    _ = beat.tick() => if ws.send(Ws::Binary(encode(&Message::Heartbeat, &[]).into())).await.is_err() { return },
                                    message = ws.next() => match message {
                                        Some(Ok(Ws::Binary(bytes))) => if matches!(decode(&bytes).map(|d| d.0), Ok(Message::Welcome { .. })) {
                                            counter.fetch_add(1, Ordering::SeqCst);
                                        },
                                        Some(Ok(_)) => {}
                                        _ => return,
                                    },
                                }
                            }
                        })
                    })
                    .collect();
                for member in members {
                    let _ = member.await;
                }
            });
        });
        Self { stop: Some(stop), joined, thread: Some(thread) }
    }
}

impl Crowd {
    /// Waits until all `count` have been welcomed.
    pub fn wait_joined(&self, count: usize, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while self.joined.load(std::sync::atomic::Ordering::SeqCst) < count {
            assert!(std::time::Instant::now() < deadline, "only {} joined", self.joined.load(std::sync::atomic::Ordering::SeqCst));
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}


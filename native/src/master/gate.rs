//! The door every connection passes: it is handed to HTTP only once it has
//! spoken (and, with TLS, finished its handshake) within the handshake
//! timeout. Each waits in a task of its own, so a slow or silent client holds
//! up no one, and is dropped when its time is up. hyper's own header timeout
//! then covers a request head that starts but never ends.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Accepted connections that have passed the gate.
#[derive(Debug)]
pub struct GatedListener<Io> {
    ready: mpsc::Receiver<(Io, SocketAddr)>,
    local: SocketAddr,
}

impl GatedListener<TcpStream> {
    /// Plain TCP: a connection passes once its first bytes arrive.
    pub fn plain(tcp: TcpListener, timeout: Duration) -> std::io::Result<Self> {
        Self::new(tcp, timeout, |stream| async move {
            first_bytes(&stream).await?;
            Ok(stream)
        })
    }
}

impl GatedListener<tokio_rustls::server::TlsStream<TcpStream>> {
    /// TLS: a connection passes once its handshake is done and its first
    /// encrypted bytes after it arrive.
    pub fn tls(tcp: TcpListener, config: Arc<rustls::ServerConfig>, timeout: Duration) -> std::io::Result<Self> {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        Self::new(tcp, timeout, move |stream| {
            let acceptor = acceptor.clone();
            async move {
                let mut tls =
                    acceptor.accept(stream).await.map_err(|e| std::io::Error::new(e.kind(), format!("TLS handshake failed: {e}")))?;
                // The request often rides in with the handshake's last flight; then it is
                // already inside rustls, not on the socket.
                let buffered = tls.get_mut().1.process_new_packets().map_or(0, |state| state.plaintext_bytes_to_read());
                if buffered == 0 {
                    first_bytes(tls.get_ref().0).await?;
                }
                Ok(tls)
            }
        })
    }
}

impl<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static> GatedListener<Io> {
    fn new<F, Fut>(tcp: TcpListener, timeout: Duration, open: F) -> std::io::Result<Self>
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = std::io::Result<Io>> + Send + 'static,
    {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            while !tx.is_closed() {
                let (stream, addr) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!("cannot accept a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Small frames (a task's header, then its first chunk) must not wait for
                // delayed ACKs: without TCP_NODELAY each task costs tens of milliseconds.
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::warn!("cannot set TCP_NODELAY: {e}");
                }
                let (opening, tx) = (open(stream), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, opening).await {
                        Ok(Ok(io)) => {
                            let _ = tx.send((io, addr)).await;
                        }
                        Ok(Err(e)) => tracing::warn!(%addr, "closed a connection before its first request: {e}"),
                        Err(_) => tracing::warn!(%addr, "closed a connection that said nothing within {timeout:?}"),
                    }
                });
            }
        });
        Ok(Self { ready, local })
    }
}

/// Waits until the peer has sent something; an orderly close is an error.
async fn first_bytes(stream: &TcpStream) -> std::io::Result<()> {
    match stream.peek(&mut [0u8; 1]).await? {
        0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
        _ => Ok(()),
    }
}

impl<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static> axum::serve::Listener for GatedListener<Io> {
    type Io = Io;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            None => std::future::pending().await, // the acceptor stopped: serve no more
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

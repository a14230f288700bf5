//! A TCP proxy on loopback that can drop every connection on command.
//!
//! Workers and cleaners reach PostgreSQL through it. [`Proxy::cut_all`] closes both ends of
//! every connection open at that moment, which is what a process sees when a network path
//! fails or a load balancer drops its flows: queries in flight fail, pooled connections are
//! dead, session state (advisory locks, `LISTEN`) is gone. New connections are accepted as
//! usual, so the processes can reconnect.
//!
//! [`Proxy::partition`] is the other way a path fails: nothing is closed, nothing gets
//! through. Every connection, open or new, stays up on both ends and forwards no byte, as
//! when a firewall or NAT drops a flow without telling either side. [`Proxy::heal`] ends
//! it: the connections held through the partition are closed (the bytes caught in them
//! are lost, as a reset flow's are) and new ones are forwarded again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::ChaosError;

/// A running proxy; stops accepting when dropped.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    conns: Arc<Mutex<HashMap<u64, AbortHandle>>>,
    accept: AbortHandle,
    /// `true` while partitioned.
    partitioned: watch::Sender<bool>,
}

impl Proxy {
    /// Listen on a free port of 127.0.0.1 and forward every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Proxy, ChaosError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| ChaosError::Setup(format!("proxy: cannot listen: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| ChaosError::Setup(format!("proxy: {e}")))?;
        let conns: Arc<Mutex<HashMap<u64, AbortHandle>>> = Arc::default();
        let registry = conns.clone();
        let (partitioned, partition) = watch::channel(false);
        let accept = tokio::spawn(async move {
            let mut next = 0u64;
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                next += 1;
                let id = next;
                let registry2 = registry.clone();
                let partition = partition.clone();
                let task = tokio::spawn(async move {
                    forward(client, upstream, partition).await;
                    if let Ok(mut map) = registry2.lock() {
                        map.remove(&id);
                    }
                });
                if let Ok(mut map) = registry.lock() {
                    map.insert(id, task.abort_handle());
                }
            }
        });
        Ok(Proxy {
            addr,
            conns,
            accept: accept.abort_handle(),
            partitioned,
        })
    }

    /// Start a half-open partition: every connection stays open and forwards nothing.
    pub fn partition(&self) {
        self.partitioned.send_replace(true);
    }

    /// End the partition: close the connections held through it, forward new ones.
    pub fn heal(&self) {
        self.partitioned.send_replace(false);
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Close every open connection; returns how many.
    pub fn cut_all(&self) -> usize {
        let Ok(mut map) = self.conns.lock() else {
            return 0;
        };
        let n = map.len();
        for (_, task) in map.drain() {
            task.abort();
        }
        n
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut_all();
    }
}

async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut partition: watch::Receiver<bool>,
) {
    if *partition.borrow() {
        // Accepted during the partition: held open, never forwarded.
        let _ = partition.wait_for(|p| !*p).await;
        return;
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return; // the server is down (restarting): the client sees its connection close
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let partitioned = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
        _ = partition.wait_for(|p| *p) => true,
    };
    if partitioned {
        // Both sockets stay open and silent until the partition heals.
        let _ = partition.wait_for(|p| !*p).await;
    }
}

//! A TCP proxy between two cluster nodes that a test can cut and heal.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct FaultProxy {
    pub port: u16,
    /// Where links go; 0 until [`FaultProxy::forward_to`] (a link made
    /// before then is dropped).
    target: Arc<AtomicU16>,
    cut: Arc<AtomicBool>,
    /// While true, links stay open but no byte passes (a silent partition).
    silent: watch::Sender<bool>,
    /// Bumped on every cut: live links watch it and drop.
    generation: watch::Sender<u64>,
    /// Bumped by [`FaultProxy::deafen`]: links made before stop passing
    /// what the target sends.
    deaf: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a port of its own; forwards nothing until told where to.
    /// (The target is set later because a node's port is known only once
    /// it runs, and its seeds name this proxy.)
    pub async fn start() -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Arc::new(AtomicU16::new(0));
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let (silent, _) = watch::channel(false);
        let deaf = Arc::new(AtomicU64::new(0));
        let task = {
            let deaf = deaf.clone();
            let target = target.clone();
            let cut = cut.clone();
            let generation = generation.clone();
            let silent = silent.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((inbound, _)) = listener.accept().await else {
                        return;
                    };
                    let target = target.load(Ordering::SeqCst);
                    if cut.load(Ordering::SeqCst) || target == 0 {
                        drop(inbound);
                        continue;
                    }
                    let mut gen = generation.subscribe();
                    let (s1, s2) = (silent.subscribe(), silent.subscribe());
                    let deaf = (deaf.clone(), deaf.load(Ordering::SeqCst));
                    tokio::spawn(async move {
                        let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                            return;
                        };
                        let (ri, wi) = inbound.into_split();
                        let (ro, wo) = outbound.into_split();
                        tokio::select! {
                            _ = pipe(ri, wo, s1, None) => {}
                            _ = pipe(ro, wi, s2, Some(deaf)) => {}
                            _ = gen.changed() => {}
                        }
                    });
                }
            })
        };
        FaultProxy {
            port,
            target,
            cut,
            silent,
            generation,
            deaf,
            task,
        }
    }

    /// Sends every link from now on to this port on 127.0.0.1.
    pub fn forward_to(&self, port: u16) {
        self.target.store(port, Ordering::SeqCst);
    }

    /// Drops every link through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Keeps every link open but passes no byte, as a silent network
    /// partition does: only a timeout can notice it.
    pub fn blackhole(&self) {
        self.silent.send_replace(true);
    }

    /// Links open now keep carrying bytes to the target but drop every
    /// byte back (the target's answers are lost, as when a connection dies
    /// after a request left); new links are not affected.
    pub fn deafen(&self) {
        self.deaf.fetch_add(1, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.silent.send_replace(false);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies bytes, holding them while the proxy is silent, and dropping them
/// once `deaf` (the proxy's deafness generation and the link's) differ.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut silent: watch::Receiver<bool>,
    deaf: Option<(Arc<AtomicU64>, u64)>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while *silent.borrow_and_update() {
            if silent.changed().await.is_err() {
                return;
            }
        }
        if deaf
            .as_ref()
            .is_some_and(|(now, born)| now.load(Ordering::SeqCst) != *born)
        {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

//! The HTTP server of a test stand-in (schema registry, OTLP receiver): an axum app on a
//! free port of 127.0.0.1, served from a thread of its own until dropped.

use std::{net::SocketAddr, thread::JoinHandle};

use axum::Router;
use tokio::sync::oneshot;

use crate::Error;

/// A running stand-in server; dropping it stops the server and waits for its thread.
#[derive(Debug)]
pub struct Server {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves `app`; `what` names the stand-in in errors.
    pub fn start(app: Router, what: &str) -> Result<Self, Error> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| Error::Failed(format!("binding the {what}: {e}")))?;
        let address: SocketAddr = listener.local_addr().map_err(|e| Error::Failed(format!("{what} address: {e}")))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Failed(format!("{what} runtime: {e}")))?;
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
                let shutdown = async move {
                    let _ = stopped.await;
                };
                let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
            });
        });
        Ok(Self { url: format!("http://{address}"), stop: Some(stop), thread: Some(thread) })
    }

    /// Its base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

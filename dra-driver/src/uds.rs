//! Unix-socket plumbing for gRPC: binding a listener where a stale socket may remain,
//! and a client channel over a socket path.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::{Channel, Endpoint, Uri};

/// Why a socket could not be bound or reached.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding or preparing the socket path failed.
    #[error("socket {path}: {source}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// Connecting failed.
    #[error("connecting to {path}: {source}")]
    Connect {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Binds `path`, creating its directory and replacing a socket left by a previous run.
pub fn bind(path: &Path) -> Result<UnixListener, Error> {
    let err = |source| Error::Bind { path: path.to_owned(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    UnixListener::bind(path).map_err(err)
}

/// A gRPC channel to the server listening on `path`.
pub async fn connect(path: &Path) -> Result<Channel, Error> {
    let owned = path.to_owned();
    let endpoint = Endpoint::from_static("http://localhost");
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = owned.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|source| Error::Connect { path: path.to_owned(), source })
}

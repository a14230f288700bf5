//! The write connection: one `rusqlite` connection owned by one dedicated thread.
//!
//! SQLite admits one writer at a time, so the store keeps exactly one write connection. It
//! lives on a thread of its own (`sqlite-writer`) that takes jobs from a channel
//! and runs each one to the end, a whole `BEGIN IMMEDIATE … COMMIT` transaction, before the
//! next. A caller pays one hand-off per job, however many statements the job runs, and the
//! connection never moves between threads, so its statement cache stays warm for the life
//! of the store. Why this is not sqlx's connection is explained in the crate docs.
//!
//! After every job the thread checks that the connection is back in autocommit mode and
//! rolls back otherwise: a failed or panicking job never leaves a transaction open for the
//! next one. [`Writer::close`] queues a close after the jobs already sent, waits for them
//! and for the connection to close; later jobs fail with [`StoreError::Unavailable`].
//! Dropping the writer without closing it also ends the thread: it leaves its loop when the
//! channel closes, finishing the jobs already queued, and closes the connection.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};
use seqlease_core::StoreError;
use tokio::sync::oneshot;

use crate::SqliteOptions;
use crate::checkpoint::{Checkpointer, WRITER_AUTOCHECKPOINT};
use crate::error::{BACKEND, WriteError, map_rusqlite};

/// Prepared statements kept by the write connection; the write path has about a dozen.
const STATEMENT_CACHE: usize = 64;

/// A unit of work run on the write thread.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

enum Message {
    Job(Job),
    /// Close the connection, then acknowledge and stop.
    Close(oneshot::Sender<()>),
}

/// The store's write connection and the thread that owns it.
pub(crate) struct Writer {
    /// `None` once [`Writer::close`] was called.
    jobs: Mutex<Option<mpsc::Sender<Message>>>,
    /// The database file, named in errors.
    path: Arc<Path>,
}

fn closed() -> StoreError {
    StoreError::Unavailable {
        backend: BACKEND,
        detail: "the store was closed".to_string(),
    }
}

impl Writer {
    /// Open the write connection to the (already migrated) database at `path` on a new
    /// thread, and wait until it is ready.
    pub async fn open(path: &Path, opts: &SqliteOptions) -> Result<Writer, StoreError> {
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let config = Config {
            path: path.to_path_buf(),
            busy_timeout: opts.busy_timeout,
            synchronous_full: opts.synchronous_full,
        };
        // Started from here, not from the write thread: a new thread shows its parent's
        // name until it sets its own, and only write threads are named sqlite-writer.
        let checkpointer = Checkpointer::start(path);
        std::thread::Builder::new()
            .name("sqlite-writer".to_string())
            .spawn(move || match config.connect() {
                Ok(conn) => {
                    if ready_tx.send(Ok(())).is_ok() {
                        serve(conn, rx, checkpointer);
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| StoreError::Unavailable {
                backend: BACKEND,
                detail: format!("cannot start the sqlite write thread: {e}"),
            })?;
        match ready_rx.await {
            Ok(Ok(())) => Ok(Writer {
                jobs: Mutex::new(Some(tx)),
                path: Arc::from(path),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::Unavailable {
                backend: BACKEND,
                detail: format!(
                    "the sqlite write thread for {} stopped while opening",
                    path.display()
                ),
            }),
        }
    }

    /// Run `job` on the write connection, after the jobs sent before it, and return what it
    /// returns, SQLite errors mapped with the store's path. A job that fails should leave
    /// its transaction to be rolled back (rusqlite's `Transaction` does so when dropped);
    /// the thread checks afterwards in any case.
    pub async fn run<T, F>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, WriteError> + Send + 'static,
    {
        let (reply_tx, reply_rx) = oneshot::channel();
        let path = self.path.clone();
        let job: Job = Box::new(move |conn| {
            // The caller may have gone away (its future dropped); the work is done anyway.
            let _ = reply_tx.send(job(conn).map_err(|e| e.into_store(&path)));
        });
        self.send(Message::Job(job))?;
        reply_rx.await.map_err(|_| StoreError::Unavailable {
            backend: BACKEND,
            detail: "the sqlite write thread stopped during the call (a bug: see the log)"
                .to_string(),
        })?
    }

    fn send(&self, message: Message) -> Result<(), StoreError> {
        let jobs = self
            .jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let sender = jobs.as_ref().ok_or_else(closed)?;
        sender.send(message).map_err(|_| StoreError::Unavailable {
            backend: BACKEND,
            detail: "the sqlite write thread has stopped (a bug: see the log)".to_string(),
        })
    }

    /// Close the connection after the jobs already sent, and wait for it. Later calls fail
    /// with [`StoreError::Unavailable`].
    pub async fn close(&self) {
        let sender = self
            .jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        let Some(sender) = sender else { return };
        let (ack_tx, ack_rx) = oneshot::channel();
        if sender.send(Message::Close(ack_tx)).is_ok() {
            // An error means the thread is already gone, which is what we wanted.
            let _ = ack_rx.await;
        }
    }
}

/// What the write thread needs to open its connection.
struct Config {
    path: PathBuf,
    busy_timeout: std::time::Duration,
    synchronous_full: bool,
}

impl Config {
    /// Open the connection and set its pragmas. The file exists and is in WAL mode (a
    /// persistent property that opening set); the connection does not create files.
    fn connect(&self) -> Result<Connection, StoreError> {
        let map = |e| map_rusqlite(e, &self.path);
        let conn = Connection::open_with_flags(
            &self.path,
            // The connection is only ever used by the write thread: no SQLite mutex needed.
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(map)?;
        conn.busy_timeout(self.busy_timeout).map_err(map)?;
        let synchronous = if self.synchronous_full {
            "FULL"
        } else {
            "NORMAL"
        };
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(map)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(map)?;
        // Checkpoints run on their own thread (`checkpoint`); this is the backstop.
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT)
            .map_err(map)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(conn)
    }
}

/// The write thread: run jobs in order until closed or every sender is gone.
fn serve(
    mut conn: Connection,
    jobs: mpsc::Receiver<Message>,
    mut checkpointer: Option<Checkpointer>,
) {
    let mut ack = None;
    while let Ok(message) = jobs.recv() {
        match message {
            Message::Job(job) => {
                // A panic is a bug; its caller sees the reply channel closed. Contain it so
                // the store keeps serving the other callers.
                if catch_unwind(AssertUnwindSafe(|| job(&mut conn))).is_err() {
                    tracing::error!("a sqlite write job panicked; its batch was rolled back");
                }
                if !conn.is_autocommit()
                    && let Err(e) = conn.execute_batch("ROLLBACK")
                {
                    tracing::warn!(error = %e, "rolling back a failed sqlite write transaction failed");
                }
                if let Some(c) = &mut checkpointer {
                    c.committed();
                }
            }
            Message::Close(done) => {
                ack = Some(done);
                break;
            }
        }
    }
    drop(checkpointer); // stops and joins the checkpoint thread first
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "closing the sqlite write connection failed");
    }
    if let Some(done) = ack {
        let _ = done.send(());
    }
}

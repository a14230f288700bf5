//! WAL checkpoints off the write path.
//!
//! In WAL mode every commit appends pages to the log, and a checkpoint copies them back
//! into the database file and fsyncs it. Left to SQLite, the checkpoint runs inside the
//! commit that pushes the log past `wal_autocheckpoint` pages (1,000 by default) — on the
//! write thread, so every batch queued behind it waits: about one commit in 44 took 3–4 ms
//! longer, which was the store's p99 commit latency. Here a thread of its own
//! (`sqlite-checkpoint`, with its own connection) runs `PASSIVE` checkpoints, which never
//! block the writer, whenever the write thread has committed [`NUDGE_EVERY`] transactions
//! since the last nudge. The write connection keeps an autocheckpoint at
//! [`WRITER_AUTOCHECKPOINT`] pages as a backstop: under constant load the background
//! checkpoint rarely finds the log fully copied at the moment a write begins (which is
//! when SQLite starts the log over), so the writer's own checkpoint resets the log now and
//! then, cheaply, because the pages are already copied.

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

use rusqlite::{Connection, OpenFlags};

/// Write transactions between nudges of the checkpoint thread (~1,000–1,500 WAL pages
/// under the bench load, close to SQLite's default checkpoint size).
pub(crate) const NUDGE_EVERY: u32 = 64;

/// The write connection's own autocheckpoint threshold, in pages: the backstop.
pub(crate) const WRITER_AUTOCHECKPOINT: u32 = 10_000;

/// The checkpoint thread; dropping it stops the thread and waits for it.
pub(crate) struct Checkpointer {
    nudges: Option<mpsc::SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
    since_nudge: u32,
}

impl Checkpointer {
    /// Start the thread; it opens its own connection to `path`. `None` (and a warning) if
    /// the thread cannot start; if the connection cannot open, the thread warns and ends.
    /// Either way the writer's autocheckpoint then does all checkpoints.
    pub(crate) fn start(path: &Path) -> Option<Checkpointer> {
        let (nudges, rx) = mpsc::sync_channel(1);
        let path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".to_string())
            .spawn(move || {
                // Opened here, not by the caller: opening is blocking file I/O, and the
                // caller is on the async runtime.
                match Connection::open_with_flags(
                    &path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                ) {
                    Ok(conn) => serve(conn, rx),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot open the sqlite checkpoint connection; checkpoints stay on the write thread");
                    }
                }
            });
        match thread {
            Ok(thread) => Some(Checkpointer {
                nudges: Some(nudges),
                thread: Some(thread),
                since_nudge: 0,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the sqlite checkpoint thread; checkpoints stay on the write thread");
                None
            }
        }
    }

    /// The write thread committed a transaction.
    pub(crate) fn committed(&mut self) {
        self.since_nudge += 1;
        if self.since_nudge >= NUDGE_EVERY {
            self.since_nudge = 0;
            if let Some(nudges) = &self.nudges {
                // Full: a checkpoint is already due; it will take these pages too.
                let _ = nudges.try_send(());
            }
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.nudges.take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the sqlite checkpoint thread panicked");
        }
    }
}

fn serve(conn: Connection, nudges: mpsc::Receiver<()>) {
    while nudges.recv().is_ok() {
        // (busy, log pages, pages copied). Busy means another checkpoint runs: fine.
        let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
            ))
        });
        match result {
            Ok((_, log, copied)) => tracing::trace!(log, copied, "sqlite checkpoint"),
            Err(e) => tracing::debug!(error = %e, "sqlite checkpoint failed; the next one retries"),
        }
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "closing the sqlite checkpoint connection failed");
    }
}

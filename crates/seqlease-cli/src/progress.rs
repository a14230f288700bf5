//! Progress lines for long-running commands: one line on stderr at a steady interval, so a
//! terminal and a CI log both show that work is moving.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Prints `line()` every `every` until dropped.
pub struct Ticker {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Ticker {
    /// Start printing.
    pub fn start(every: Duration, line: impl Fn() -> String + Send + 'static) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.tick().await;
            loop {
                interval.tick().await;
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                eprintln!("{}", line());
            }
        });
        Ticker { stop, task }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}

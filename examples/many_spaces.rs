//! How registering spaces scales: an application that gives each tenant a space of its
//! own. Makes `N` spaces through one engine and commits one operation in each, printing
//! the time taken every N/5 spaces (a time per space that grows with N would show up as
//! rising steps).
//!
//! ```sh
//! cargo run --release --example many_spaces -- 100000 memory
//! cargo run --release --example many_spaces -- 20000 sqlite:///tmp/many.db
//! ```
//!
//! Figures: docs/benchmarks.md, "Many spaces".

use std::sync::Arc;
use std::time::Instant;

use seqlease::core::SystemClock;
use seqlease::{Engine, Grant, OperationBody, open_store};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let spaces: u64 = args.next().as_deref().unwrap_or("10000").parse()?;
    let url = args.next().unwrap_or_else(|| "memory".to_owned());
    let engine = Engine::builder()
        .store(open_store(&url, Arc::new(SystemClock)).await?)
        .build()
        .await?;
    let step = (spaces / 5).max(1);
    let started = Instant::now();
    for i in 1..=spaces {
        let space = engine.space(&format!("tenant-{i}")).await?;
        let mut lease = space.grant(Grant::new(format!("op-{i}"), "view")).await?;
        lease
            .commit(OperationBody::new("set", vec![1, 2, 3]))
            .await?;
        if i % step == 0 {
            println!("{i} spaces: {:.2?}", started.elapsed());
        }
    }
    Ok(())
}

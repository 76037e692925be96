//! HTTP/2 with several requests in flight on each worker's connection: one task per
//! stream, all on the worker's one connection, replaced after a GOAWAY.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http2;
use tokio::time::{Instant, timeout};

use crate::load::{
    Failure, H2, LoadConfig, NotProcessed, Record, Shared, Target, connect_h2, h2_request, settle,
};

/// A worker's HTTP/2 connection, shared by its streams.
#[derive(Debug, Default)]
struct H2Slot {
    /// The number of connections made so far, and the current one's sender.
    conn: tokio::sync::Mutex<(u64, Option<http2::SendRequest<Empty<Bytes>>>)>,
}

impl H2Slot {
    /// The current connection (made now if there is none) and its number.
    async fn get(
        &self,
        target: &Target,
        opened: &AtomicU64,
    ) -> Result<(u64, http2::SendRequest<Empty<Bytes>>), Failure> {
        let mut slot = self.conn.lock().await;
        if let Some(s) = &slot.1 {
            return Ok((slot.0, s.clone()));
        }
        let s = connect_h2(target).await?;
        opened.fetch_add(1, Ordering::Relaxed);
        slot.0 += 1;
        slot.1 = Some(s.clone());
        Ok((slot.0, s))
    }

    /// Drops connection number `generation` if it is still the current one; says
    /// whether it was.
    async fn drop_conn(&self, generation: u64) -> bool {
        let mut slot = self.conn.lock().await;
        if slot.0 == generation && slot.1.is_some() {
            slot.1 = None;
            true
        } else {
            false
        }
    }
}

/// HTTP/2 with `cfg.streams` requests in flight on one connection: one task per stream,
/// all on the worker's connection.
pub(crate) async fn worker(cfg: Arc<LoadConfig>, shared: Arc<Shared>, index: usize) -> Vec<Record> {
    let slot = Arc::new(H2Slot::default());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..cfg.streams {
        let (cfg, shared, slot) = (Arc::clone(&cfg), Arc::clone(&shared), Arc::clone(&slot));
        tasks.spawn(async move { stream_loop(&cfg, &shared, index, &slot).await });
    }
    let mut records = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(r) => records.extend(r),
            Err(e) => {
                if let Ok(panic) = e.try_into_panic() {
                    std::panic::resume_unwind(panic);
                }
            }
        }
    }
    records
}

/// One stream of a worker: requests back to back on the worker's HTTP/2 connection.
async fn stream_loop(
    cfg: &LoadConfig,
    shared: &Shared,
    index: usize,
    slot: &H2Slot,
) -> Vec<Record> {
    let target = &cfg.targets[index % cfg.targets.len()];
    let mut records = Vec::with_capacity(1 << 12);
    while shared.take_ticket(cfg) {
        let started = Instant::now();
        let mut used = None;
        let result = timeout(
            cfg.timeout,
            stream_one(cfg, target, slot, shared, &mut used),
        )
        .await;
        let (record, drop_conn) = settle(cfg, shared, started, result);
        if let (true, Some(generation)) = (drop_conn, used) {
            slot.drop_conn(generation).await;
        }
        records.push(record);
    }
    records
}

/// One request on the worker's shared HTTP/2 connection. A request that the server did
/// not process is sent again, once: on the same connection after `REFUSED_STREAM`, on a
/// new one after GOAWAY (the first stream to see it replaces the connection; the
/// others use the replacement).
async fn stream_one(
    cfg: &LoadConfig,
    target: &Target,
    slot: &H2Slot,
    shared: &Shared,
    used: &mut Option<u64>,
) -> Result<(u16, u32, bool), Failure> {
    for attempt in 0..2 {
        let (generation, mut s) = slot.get(target, &shared.opened).await?;
        *used = Some(generation);
        match h2_request(cfg, target, &mut s).await {
            H2::Done(result) => return result,
            H2::NotProcessed(how) => {
                if attempt == 0 {
                    shared.resent.fetch_add(1, Ordering::Relaxed);
                }
                if how == NotProcessed::Connection && slot.drop_conn(generation).await {
                    shared.replaced.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    Err(Failure::NotSent)
}

//! Load loops and figures shared by the benchmark programs: a bounded
//! closed-loop driver, latency percentiles, and the "met"/"NOT met" verdict.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Seconds per measurement: the first numeric argument (cargo adds
/// `--bench`), else `default`.
pub fn seconds_arg(default: f64) -> f64 {
    std::env::args().skip(1).find_map(|a| a.parse().ok()).filter(|s: &f64| *s > 0.0).unwrap_or(default)
}

/// Runs `call` from `workers` tasks for `secs` seconds (and at most
/// `max_calls` calls); returns calls completed per second. The first failed
/// call ends the run with its error.
pub async fn drive<F, Fut>(workers: usize, secs: f64, max_calls: u64, call: F) -> anyhow::Result<f64>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let call = Arc::new(call);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (call, done, stop) = (call.clone(), done.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && done.load(Ordering::Relaxed) < max_calls
            {
                call().await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            stop.store(true, Ordering::Relaxed);
            Ok::<(), anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// Runs `call` once every `period` (a late tick is not made up) for `secs`
/// seconds and at most `max_calls` times; returns how many calls completed.
pub async fn every<F, Fut>(period: Duration, secs: f64, max_calls: u64, mut call: F) -> anyhow::Result<u64>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut done = 0;
    while done < max_calls {
        tick.tick().await;
        if Instant::now() >= deadline {
            break;
        }
        call(done).await?;
        done += 1;
    }
    Ok(done)
}

/// Runs `call` one at a time for `secs` seconds (at most `max_calls` times)
/// and returns the latency of each.
pub async fn probe<F, Fut>(secs: f64, max_calls: usize, mut call: F) -> anyhow::Result<Latencies>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut samples = Vec::new();
    while samples.len() < max_calls && Instant::now() < deadline {
        let started = Instant::now();
        call().await?;
        samples.push(started.elapsed());
    }
    Ok(Latencies::new(samples))
}

/// Latency samples, sorted.
pub struct Latencies(Vec<Duration>);

impl Latencies {
    pub fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        Latencies(samples)
    }

    pub fn count(&self) -> usize {
        self.0.len()
    }

    /// The nearest-rank percentile `p` (0 to 100); zero without samples.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    pub fn max(&self) -> Duration {
        self.0.last().copied().unwrap_or_default()
    }

    /// "count N, p50 x ms, p99 y ms, max z ms".
    pub fn summary(&self) -> String {
        format!(
            "count {:>6}, p50 {:>8.2} ms, p99 {:>8.2} ms, max {:>8.2} ms",
            self.count(),
            ms(self.percentile(50.0)),
            ms(self.percentile(99.0)),
            ms(self.max())
        )
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// "met" or "NOT met".
pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

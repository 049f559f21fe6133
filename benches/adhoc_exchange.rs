//! Benchmark (a program, not a test): an Adhoc exchange of N keys between two
//! local instances over mTLS, N = 1, 1,000, 10,000. Prints the time from the
//! approval call to REQUEST_COMPLETED on both sides, and keys/s.
//!
//! Run: cargo bench --bench adhoc_exchange            (all sizes)
//!      cargo bench --bench adhoc_exchange -- 10000   (chosen sizes)
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks may panic on a broken fixture

mod common;

fn main() -> anyhow::Result<()> {
    let sizes = common::sizes(&[1, 1_000, 10_000]);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    println!("Adhoc exchange, software signer, two instances on loopback over mTLS ({} cores)", common::num_cpus());
    common::table(&sizes, |n, _| rt.block_on(common::exchange(n, None, None)))?;
    Ok(())
}

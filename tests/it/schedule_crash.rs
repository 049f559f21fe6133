//! Clone schedule crash trials through the binaries. Each trial gives a
//! fresh target (holding a few records of its own) a schedule whose run is
//! due as the daemon starts (written into its store while it is stopped),
//! starts kmfd and kill -9s it at a random moment: while it starts, right
//! after the run, or during the clone the run started. Right after the kill
//! the run is all there or not at all (the schedule counts it exactly when
//! its clone exists, with the id derived from the due time) and the records
//! are old or new, never a mix; after a restart exactly one clone has run
//! for that due time, complete with the exact record count.
//!
//! `KMF_SCHEDULE_CRASH_TRIALS` sets the number of trials (default 10) and
//! `KMF_CRASH_SEED` the random seed (printed, so a failure can be replayed).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kmf::domain::clone_schedule::{Cadence, CloneSchedule};
use kmf::domain::ids::{Host, Name, SysId, UnixMillis};
use kmf::node::clone::scheduled_clone_id;
use kmf::store::{CloneStore, JobStore, Store, clone_schedule_job_id};

use crate::binaries::{Settings, free_port, init, ok, spawn_listening, start_listening};
use crate::clone_crash::{record_counts, seed};
use crate::support::wait_for;

const RECORDS: u32 = 5_000;
const OWN: u32 = 10;
/// Kill moments are drawn from 0 to this many milliseconds after kmfd is spawned.
const KILL_WINDOW_MS: u64 = 700;
const HOUR_MS: i64 = 3_600_000;

/// A schedule "trial" of the source, hourly, due now (created an hour ago),
/// written into the stopped target's store; returns its due time.
fn schedule_due_now(dir: &Path, source: &str, source_host: &str) -> UnixMillis {
    let store = Arc::new(Store::open_redb(&dir.join("kmf.redb")).expect("open the target's store"));
    let created = UnixMillis(kmf::clock::now().0 - HOUR_MS);
    let schedule = CloneSchedule::new(
        Name::parse("trial", "name").expect("name"),
        SysId::parse(source).expect("sys_id"),
        Host::parse(source_host).expect("host"),
        Cadence::every(HOUR_MS).expect("cadence"),
        created,
        "test".into(),
    )
    .expect("schedule");
    wait_for(CloneStore::new(&store).create_clone_schedule(schedule.clone(), vec![])).expect("create the schedule");
    schedule.next_run_at
}

/// The schedule's runs and what the store holds of its one due run, read
/// from a stopped daemon's store; panics if the run is half there.
fn run_state(dir: &Path, due: UnixMillis, trial: usize) -> u64 {
    let store = Arc::new(Store::open_redb(&dir.join("kmf.redb")).expect("open the killed target's store"));
    let (name, clones) = (Name::parse("trial", "name").expect("name"), CloneStore::new(&store));
    let [schedule] = <[_; 1]>::try_from(wait_for(clones.clone_schedules()).expect("schedules")).expect("one schedule");
    let runs = wait_for(clones.clone_runs()).expect("clone runs");
    let job =
        wait_for(JobStore::new(&store).job(clone_schedule_job_id(&name))).expect("job").expect("the schedule's job");
    match schedule.runs {
        0 => {
            assert!(runs.is_empty(), "trial {trial}: a clone without its run recorded: {runs:?}");
            assert_eq!((schedule.next_run_at, job.next_due), (due, due), "trial {trial}");
        }
        1 => {
            let expected = scheduled_clone_id(&name, due);
            assert_eq!(
                runs.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
                std::slice::from_ref(&expected),
                "trial {trial}"
            );
            assert_eq!(schedule.last_clone, Some(expected), "trial {trial}");
            assert!(schedule.next_run_at > due && job.next_due == schedule.next_run_at, "trial {trial}: {job:?}");
        }
        n => panic!("trial {trial}: {n} runs of one due time"),
    }
    schedule.runs
}

#[test]
fn kill_9_around_a_scheduled_run_makes_it_exactly_once() {
    let (trials, seed_value, mut rng) = crate::binaries::trials("schedule crash", "KMF_SCHEDULE_CRASH_TRIALS", 10);
    let tmp = tempfile::tempdir().expect("tmp");
    let pki = tmp.path().join("pki");
    crate::binaries::operator_pki(&pki);
    let source_dir = tmp.path().join("source");
    let source_id = init(&source_dir, &pki);
    seed(&source_dir, "hr", RECORDS);
    let source_listen = free_port();
    let mut source = start_listening(&source_dir, &pki, Settings::Flags, &source_listen);

    let (mut before_run, mut mid_clone, mut after_swap) = (0, 0, 0);
    for trial in 0..trials {
        let target_dir = tmp.path().join(format!("target-{trial}"));
        let target_id = init(&target_dir, &pki);
        seed(&target_dir, "own", OWN);
        ok(source.ctl(&pki).args(["clone", "target", "add", &target_id, "127.0.0.1:1"]));
        let due = schedule_due_now(&target_dir, &source_id, &source_listen);

        let target_listen = free_port();
        let mut target = spawn_listening(&target_dir, &pki, Settings::Flags, &target_listen);
        let kill_after_ms = rng.next() % KILL_WINDOW_MS;
        std::thread::sleep(Duration::from_millis(kill_after_ms)); // the random kill moment, not a wait for state
        target.child.kill().expect("kill -9 the target");
        target.child.wait().expect("reap");

        let runs = run_state(&target_dir, due, trial);
        let moment = match (runs, record_counts(&target_dir, "own")) {
            (0, (own, 0)) if own == OWN as usize => {
                before_run += 1;
                "before the run"
            }
            (1, (own, 0)) if own == OWN as usize => {
                mid_clone += 1;
                "after the run, before its clone's swap"
            }
            (1, (0, n)) if n == RECORDS as usize => {
                after_swap += 1;
                "after the swap"
            }
            other => panic!("trial {trial} (seed {seed_value}, {kill_after_ms} ms): (runs, records) {other:?}"),
        };

        let mut target = start_listening(&target_dir, &pki, Settings::Flags, &target_listen);
        let id = scheduled_clone_id(&Name::parse("trial", "name").expect("name"), due).to_string();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = crate::binaries::run(target.ctl(&pki).args(["--json", "clone", "list"]));
            let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let done = list["clones"].as_array().and_then(|l| l.iter().find(|c| c["cloneId"] == id.as_str()));
            if done.is_some_and(|c| c["state"] == "completed") {
                break;
            }
            assert!(Instant::now() < deadline, "trial {trial} (seed {seed_value}): no completed clone {id}: {list}");
            std::thread::sleep(Duration::from_millis(50)); // poll interval; bounded by the deadline
        }
        target.stop();
        assert_eq!(run_state(&target_dir, due, trial), 1, "trial {trial}: one run, not two");
        assert_eq!(record_counts(&target_dir, "own"), (0, RECORDS as usize), "trial {trial}: exact record count");
        let _ = std::fs::remove_dir_all(&target_dir);
        println!("trial {trial:2}: killed {kill_after_ms:4} ms after spawn, {moment}");
    }
    source.stop();
    println!(
        "schedule crash trials: {trials} run; killed before the run in {before_run}, after it but before its clone's \
         swap in {mid_clone}, after the swap in {after_swap}; half-made runs 0, doubled runs 0, mixed records 0; \
         every run's clone completed with {RECORDS} records"
    );
    assert_eq!(before_run + mid_clone + after_swap, trials);
}

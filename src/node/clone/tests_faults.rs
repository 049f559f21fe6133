//! Clone when the link fails, and clone schedules: a lost or unreachable
//! snapshot stream is retried and the clone completes once; a schedule
//! fires when the manual clock passes its due time, and missed runs are
//! made up once.

use std::sync::atomic::Ordering;

use super::NewCloneSchedule;
use super::tests::{Faults, Instance, admin, clone_run, name, pair, put_records, records, register, start_clone};
use crate::domain::clone::CloneState;
use crate::domain::clone_schedule::{Cadence, CloneSchedule};
use crate::domain::ids::CloneId;

const MINUTE: i64 = 60_000;

/// Advances `target`'s clock a second at a time (at most `steps`), running
/// its jobs, until clone `id` is no longer running.
async fn until_settled(target: &Instance, id: &CloneId, steps: usize) -> CloneState {
    for _ in 0..steps {
        let state = clone_run(target, id).await.state;
        if state != CloneState::Running {
            return state;
        }
        target.advance_and_run(1_000).await;
    }
    clone_run(target, id).await.state
}

async fn registered_pair(records: usize) -> (Instance, Instance) {
    let (source, target) = pair();
    source.spec_with_keys("payroll", "salary", 1).await;
    put_records(&source, "salary", records).await;
    register(&source, &target).await;
    (source, target)
}

async fn schedule(target: &Instance, source: &Instance, every: i64) -> CloneSchedule {
    let new = NewCloneSchedule {
        name: name("nightly"),
        source: source.sys_id.clone(),
        source_host: source.host.clone(),
        cadence: Cadence::every(every).expect("cadence"),
    };
    target.services.clone.create_clone_schedule(&admin(), new).await.expect("schedule")
}

async fn the_schedule(target: &Instance) -> CloneSchedule {
    let mut all = target.services.clone.clone_schedules().await.expect("schedules");
    assert_eq!(all.len(), 1);
    all.remove(0)
}

#[tokio::test]
async fn a_clone_whose_snapshot_answer_is_lost_is_retried_and_completes_once() {
    let (_source, target) = registered_pair(3).await;
    target.link.faults.lose_answers.store(1, Ordering::SeqCst);
    let run = start_clone(&_source, &target).await;
    target.run_jobs().await;
    let first = clone_run(&target, &run.id).await;
    assert_eq!(first.state, CloneState::Running, "a lost stream is not a refusal");
    assert!(first.error.as_deref().is_some_and(|e| e.contains("lost")), "{:?}", first.error);
    assert_eq!(records(&target).await, 0, "nothing swapped in yet");

    assert_eq!(until_settled(&target, &run.id, 30).await, CloneState::Completed);
    let done = clone_run(&target, &run.id).await;
    assert_eq!((done.records_total, done.records_copied), (3, 3), "copied once, not twice");
    assert_eq!(records(&target).await, 3);
    assert_eq!(Faults::calls(&target.link.faults.snapshots), 2, "one lost attempt, one that went through");
}

#[tokio::test]
async fn a_clone_of_an_unreachable_source_waits_and_completes_when_it_is_back() {
    let (source, target) = registered_pair(2).await;
    target.link.faults.unreachable.store(true, Ordering::SeqCst);
    let run = start_clone(&source, &target).await;
    for _ in 0..3 {
        target.advance_and_run(5_000).await;
    }
    assert_eq!(clone_run(&target, &run.id).await.state, CloneState::Running, "still trying");
    assert!(Faults::calls(&target.link.faults.snapshots) >= 2, "it was retried");
    target.link.faults.unreachable.store(false, Ordering::SeqCst);
    assert_eq!(until_settled(&target, &run.id, 400).await, CloneState::Completed);
    assert_eq!(records(&target).await, 2);
    assert_eq!(clone_run(&target, &run.id).await.records_copied, 2);
}

#[tokio::test]
async fn a_running_clone_refuses_a_second_one_from_the_same_source() {
    let (source, target) = registered_pair(1).await;
    target.link.faults.unreachable.store(true, Ordering::SeqCst);
    let _first = start_clone(&source, &target).await;
    let second = target.services.clone.start_clone(&admin(), source.sys_id.clone(), source.host.clone()).await;
    let error = second.expect_err("one clone at a time").to_string();
    assert!(error.contains("still running"), "{error}");
    assert_eq!(target.services.clone.clone_runs().await.expect("runs").len(), 1);
}

#[tokio::test]
async fn a_clone_schedule_fires_when_the_clock_passes_its_due_time() {
    let (source, target) = registered_pair(2).await;
    let made = schedule(&target, &source, 10 * MINUTE).await;
    assert_eq!(made.next_run_at.0, target.now().0 + 10 * MINUTE);
    target.run_jobs().await;
    assert!(target.services.clone.clone_runs().await.expect("runs").is_empty(), "not due yet");

    target.clock.advance_millis(10 * MINUTE);
    assert_eq!(target.run_jobs().await, 1, "the schedule's job ran");
    let runs = target.services.clone.clone_runs().await.expect("runs");
    assert_eq!(runs.len(), 1, "one clone started");
    let fired = the_schedule(&target).await;
    assert_eq!((fired.runs, fired.last_clone.as_ref()), (1, Some(&runs[0].id)));
    assert_eq!(fired.next_run_at.0, made.next_run_at.0 + 10 * MINUTE);
    target.run_jobs().await;
    assert_eq!(clone_run(&target, &runs[0].id).await.state, CloneState::Completed);
    assert_eq!(records(&target).await, 2);
}

#[tokio::test]
async fn missed_runs_of_a_clone_schedule_are_made_up_once() {
    let (source, target) = registered_pair(1).await;
    let made = schedule(&target, &source, 10 * MINUTE).await;
    // Five intervals pass with no runner.
    target.clock.advance_millis(50 * MINUTE + 1);
    assert_eq!(target.run_jobs().await, 1, "the schedule's job ran once");
    // The clone it started and the exchange after it; the missed runs are not run one by one.
    for _ in 0..5 {
        if target.run_jobs().await == 0 {
            break;
        }
    }
    let fired = the_schedule(&target).await;
    assert_eq!(fired.runs, 1);
    assert!(fired.next_run_at > target.now(), "the next run is in the future");
    assert!(fired.next_run_at.0 > made.next_run_at.0 + 40 * MINUTE);
    assert_eq!(target.services.clone.clone_runs().await.expect("runs").len(), 1);
}

#[tokio::test]
async fn a_scheduled_run_is_skipped_while_a_clone_is_still_running() {
    let (source, target) = registered_pair(1).await;
    target.link.faults.unreachable.store(true, Ordering::SeqCst);
    let manual = start_clone(&source, &target).await;
    schedule(&target, &source, MINUTE).await;
    target.advance_and_run(MINUTE).await;
    let skipped = the_schedule(&target).await;
    assert_eq!((skipped.runs, skipped.skipped), (0, 1), "{:?}", skipped.last_outcome);
    assert!(skipped.last_outcome.unwrap_or_default().contains(manual.id.as_str()));
    assert_eq!(target.services.clone.clone_runs().await.expect("runs").len(), 1, "no second clone");
}

//! The job runner on the in-memory store with the manual clock: retries and
//! their backoff, the peer backoff, leases of a runner that died, startup
//! jobs, and what the runner writes for each `JobOutcome`. Most tests
//! register a scripted handler (`Scripted`) for the `Clone` kind, in place
//! of the clone service's, and add its jobs to the store by hand.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{JobFuture, JobHandler, JobOutcome, JobRun, PeerBackoff};
use crate::domain::ids::{Host, UnixMillis};
use crate::domain::job::{Job, JobId, JobKind};
use crate::error::{AppError, AppResult};
use crate::node::testing::{Instance, test_ca};
use crate::store::JobStore;

type Script = dyn Fn(&JobRun, usize) -> AppResult<JobOutcome> + Send + Sync;

/// A handler of `JobKind::Clone` that answers what `script` says for the
/// n-th run (from 0) and remembers, per run, the job and how long its peer
/// was waiting then.
struct Scripted {
    script: Box<Script>,
    runs: AtomicUsize,
    seen: Mutex<Vec<(JobId, Option<UnixMillis>)>>,
}

impl JobHandler for Scripted {
    fn kinds(&self) -> &'static [JobKind] {
        &[JobKind::Clone]
    }

    fn run(self: Arc<Self>, run: JobRun) -> JobFuture {
        let n = self.runs.fetch_add(1, Ordering::SeqCst);
        self.seen.lock().unwrap().push((run.job.id.clone(), run.peer_waiting_until(&peer())));
        let answer = (self.script)(&run, n);
        Box::pin(async move { answer })
    }
}

impl Scripted {
    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
}

fn peer() -> Host {
    Host::parse("peer.test:7443").expect("host")
}

/// An instance whose `Clone` jobs `script` runs.
fn scripted(
    script: impl Fn(&JobRun, usize) -> AppResult<JobOutcome> + Send + Sync + 'static,
) -> (Instance, Arc<Scripted>) {
    let instance = Instance::new(&test_ca(), "runner");
    let handler = Arc::new(Scripted { script: Box::new(script), runs: AtomicUsize::new(0), seen: Mutex::default() });
    instance.services.jobs.register(handler.clone());
    (instance, handler)
}

fn id(subject: &str) -> JobId {
    JobId::new(JobKind::Clone, subject)
}

fn jobs(instance: &Instance) -> JobStore {
    JobStore::new(instance.services.store())
}

/// Adds job `subject`, due `in_millis` from now.
async fn add(instance: &Instance, subject: &str, in_millis: i64) {
    let job = Job::new(id(subject), instance.now().plus_millis(in_millis), instance.now());
    assert!(jobs(instance).add_job(job).await.expect("add job"));
}

async fn job(instance: &Instance, subject: &str) -> Option<Job> {
    jobs(instance).job(id(subject)).await.expect("job")
}

fn boom() -> AppResult<JobOutcome> {
    Err(AppError::Internal("boom".into()))
}

fn unreachable() -> AppResult<JobOutcome> {
    Ok(JobOutcome::PeerUnreachable { host: peer().to_string(), reason: "down".into() })
}

#[tokio::test]
async fn a_failed_run_is_retried_with_a_growing_backoff_and_its_attempts_counted() {
    let (runner, handler) = scripted(|_, n| if n < 2 { boom() } else { Ok(JobOutcome::Done) });
    add(&runner, "a", 0).await;
    assert_eq!(runner.run_jobs().await, 1);
    let first = job(&runner, "a").await.expect("kept for a retry");
    assert_eq!(first.attempts, 1);
    assert!(first.last_error.as_deref().is_some_and(|e| e.contains("boom")), "{:?}", first.last_error);
    assert!(first.lease.is_none(), "the lease is given back");
    let delay = first.next_due.0 - runner.now().0;
    assert!((500..=1_000).contains(&delay), "first retry after 0.5 to 1 s, not {delay} ms");
    assert_eq!(runner.run_jobs().await, 0, "not before its backoff");

    runner.clock.advance_millis(delay);
    assert_eq!(runner.run_jobs().await, 1);
    let second = job(&runner, "a").await.expect("kept again");
    assert_eq!(second.attempts, 2);
    let delay = second.next_due.0 - runner.now().0;
    assert!((1_000..=2_000).contains(&delay), "the second retry waits longer, not {delay} ms");

    runner.clock.advance_millis(delay);
    assert_eq!(runner.run_jobs().await, 1);
    assert!(job(&runner, "a").await.is_none(), "done after it succeeded");
    assert_eq!(handler.runs(), 3);
}

#[tokio::test]
async fn after_one_job_finds_its_peer_unreachable_the_next_one_for_that_peer_waits() {
    // "a" dials and finds the peer down; "b" waits when it sees the backoff.
    let (runner, handler) = scripted(|run, _| match run.peer_waiting_until(&peer()) {
        Some(until) => Ok(JobOutcome::WaitUntil(until)),
        None => unreachable(),
    });
    add(&runner, "a", -1).await;
    add(&runner, "b", 0).await;
    assert_eq!(runner.run_jobs().await, 2);
    let (a, b) = (job(&runner, "a").await.expect("a"), job(&runner, "b").await.expect("b"));
    assert_eq!((a.attempts, b.attempts), (1, 0), "waiting is not an attempt");
    assert_eq!(b.next_due, a.next_due, "b waits until a's retry");
    let seen = handler.seen.lock().unwrap().clone();
    assert_eq!(seen, vec![(id("a"), None), (id("b"), Some(a.next_due))]);
}

#[tokio::test]
async fn a_peer_that_answers_again_ends_the_wait_of_its_other_jobs() {
    let (runner, handler) = scripted(|run, n| match n {
        0 => unreachable(),
        _ => {
            run.peer_answered(&peer());
            Ok(JobOutcome::Done)
        }
    });
    add(&runner, "a", 0).await;
    runner.run_jobs().await;
    let retry = job(&runner, "a").await.expect("a").next_due;
    runner.clock.advance_millis(retry.0 - runner.now().0);
    assert_eq!(runner.run_jobs().await, 1, "a ran again and its peer answered");
    add(&runner, "b", 0).await;
    assert_eq!(runner.run_jobs().await, 1);
    assert!(job(&runner, "b").await.is_none(), "b ran at once");
    let seen = handler.seen.lock().unwrap().clone();
    assert_eq!(seen.last(), Some(&(id("b"), None)), "b saw no backoff");
}

#[tokio::test]
async fn a_job_leased_by_a_dead_runner_is_taken_only_after_its_lease_runs_out_and_completes_once() {
    let (runner, handler) = scripted(|_, _| Ok(JobOutcome::Done));
    add(&runner, "a", 0).await;
    let store = jobs(&runner);
    let lease_millis = 120_000;
    let claimed = store.claim_due_jobs("dead".into(), runner.now(), lease_millis, 10).await.expect("claim");
    assert_eq!(claimed.len(), 1, "the dead runner took it");
    let dead_lease = claimed[0].1.clone();
    assert_eq!(runner.run_jobs().await, 0, "leased: not taken");
    assert_eq!(runner.advance_and_run(lease_millis - 1).await, 0, "not before the lease runs out");
    assert_eq!(handler.runs(), 0);
    assert_eq!(runner.advance_and_run(1).await, 1, "taken when the lease ran out");
    assert_eq!(handler.runs(), 1);
    assert!(job(&runner, "a").await.is_none(), "completed");
    assert_eq!(runner.advance_and_run(lease_millis).await, 0, "it ran once");
    let late = store.finish_job(id("a"), dead_lease, None).await;
    assert!(late.is_err(), "the dead runner's lease no longer finishes anything: {late:?}");
}

#[tokio::test]
async fn a_runner_whose_lease_was_taken_over_cannot_write_the_end_of_the_job() {
    let (runner, _handler) = scripted(|_, _| Ok(JobOutcome::Done));
    add(&runner, "a", 0).await;
    let store = jobs(&runner);
    let slow = store.claim_due_jobs("slow".into(), runner.now(), 1_000, 10).await.expect("claim")[0].1.clone();
    runner.clock.advance_millis(1_000);
    let fresh = store.claim_due_jobs("fresh".into(), runner.now(), 1_000, 10).await.expect("claim")[0].1.clone();
    assert!(fresh.claim > slow.claim, "each claim is fenced by a higher token");
    let at = runner.now();
    let policy = crate::domain::schedule::RetryPolicy::DELIVERY;
    assert!(store.retry_job(id("a"), slow.clone(), "late".into(), at, policy, 0).await.is_err());
    assert!(store.finish_job(id("a"), slow, None).await.is_err());
    assert!(job(&runner, "a").await.is_some(), "the slow runner changed nothing");
    store.finish_job(id("a"), fresh, None).await.expect("the current lease finishes it");
    assert!(job(&runner, "a").await.is_none());
}

#[tokio::test]
async fn startup_jobs_are_added_once_however_often_the_runner_starts() {
    let runner = Instance::new(&test_ca(), "runner");
    let jobs = &runner.services.jobs;
    jobs.add_startup_jobs().await;
    let first = jobs.jobs(100).await.expect("jobs");
    let kinds: Vec<JobKind> = first.iter().map(|j| j.id.kind).collect();
    assert!(kinds.contains(&JobKind::ExpirySweep) && kinds.contains(&JobKind::LifecycleSweep), "{kinds:?}");
    runner.clock.advance_millis(10);
    jobs.add_startup_jobs().await;
    jobs.add_startup_jobs().await;
    assert_eq!(jobs.jobs(100).await.expect("jobs"), first, "no job added twice, none moved");
}

#[tokio::test]
async fn run_due_once_runs_nothing_when_nothing_is_due() {
    let (runner, handler) = scripted(|_, _| Ok(JobOutcome::Done));
    assert_eq!(runner.run_jobs().await, 0, "no job at all");
    add(&runner, "later", 5_000).await;
    assert_eq!(runner.run_jobs().await, 0);
    assert_eq!(runner.advance_and_run(4_999).await, 0);
    let waiting = job(&runner, "later").await.expect("still there");
    assert_eq!((waiting.claims, waiting.lease), (0, None), "never claimed");
    assert_eq!(handler.runs(), 0);
    assert_eq!(runner.advance_and_run(1).await, 1, "due now");
}

#[tokio::test]
async fn a_sweep_that_ran_is_rescheduled_at_its_next_period() {
    let runner = Instance::new(&test_ca(), "runner");
    runner.services.jobs.add_startup_jobs().await;
    let sweep = || async { jobs(&runner).job(JobId::singleton(JobKind::ExpirySweep)).await.expect("job") };
    let due = sweep().await.expect("the expiry sweep").next_due;
    assert!(runner.run_jobs().await >= 1, "the sweeps ran");
    let after = sweep().await.expect("a recurring job stays");
    assert_eq!(after.next_due, due.plus_millis(1_000), "one period (sweep_every) after its due time");
    assert_eq!((after.attempts, after.lease.clone()), (0, None));
    // After a long pause it runs once, then a period from now: no backlog of missed runs.
    runner.clock.advance_millis(10_500);
    assert!(runner.run_jobs().await >= 1);
    assert_eq!(sweep().await.expect("sweep").next_due, runner.now().plus_millis(1_000));
    assert_eq!(runner.run_jobs().await, 0, "ran once");
}

#[tokio::test]
async fn a_recurring_run_that_succeeds_after_failures_forgets_them() {
    let (runner, _handler) = scripted(|run, n| match n {
        0 => boom(),
        _ => Ok(JobOutcome::RunAgainAt(run.job.next_due.plus_millis(60_000))),
    });
    add(&runner, "a", 0).await;
    runner.run_jobs().await;
    let failed = job(&runner, "a").await.expect("a");
    assert_eq!(failed.attempts, 1);
    runner.clock.advance_millis(failed.next_due.0 - runner.now().0);
    runner.run_jobs().await;
    let ran = job(&runner, "a").await.expect("rescheduled, not removed");
    assert_eq!((ran.attempts, ran.last_error.clone()), (0, None));
    assert_eq!(ran.next_due, failed.next_due.plus_millis(60_000));
}

#[tokio::test]
async fn waiting_postpones_a_job_without_counting_an_attempt() {
    let (runner, handler) = scripted(|run, n| match n {
        0 => Ok(JobOutcome::WaitUntil(run.job.next_due.plus_millis(30_000))),
        _ => Ok(JobOutcome::Done),
    });
    add(&runner, "a", 0).await;
    let due = job(&runner, "a").await.expect("a").next_due;
    runner.run_jobs().await;
    let waiting = job(&runner, "a").await.expect("a");
    assert_eq!((waiting.attempts, waiting.next_due, waiting.lease.clone()), (0, due.plus_millis(30_000), None));
    assert_eq!(runner.advance_and_run(29_999).await, 0);
    assert_eq!(runner.advance_and_run(1).await, 1);
    assert!(job(&runner, "a").await.is_none());
    assert_eq!(handler.runs(), 2);
}

#[tokio::test]
async fn a_settled_run_leaves_the_job_to_its_handler_and_its_lease_runs_out() {
    // Settled: the handler's own transaction ended the job. One that did not
    // leaves it leased, and it runs again only after the lease.
    let (runner, handler) = scripted(|_, n| if n == 0 { Ok(JobOutcome::Settled) } else { Ok(JobOutcome::Done) });
    add(&runner, "a", 0).await;
    runner.run_jobs().await;
    let left = job(&runner, "a").await.expect("the runner removed nothing");
    assert!(left.lease.is_some(), "still leased");
    assert_eq!(runner.advance_and_run(119_999).await, 0);
    assert_eq!(runner.advance_and_run(1).await, 1);
    assert_eq!(handler.runs(), 2);
    assert!(job(&runner, "a").await.is_none());
}

#[test]
fn the_peer_backoff_keeps_the_latest_wait_and_forgets_a_host_that_answered() {
    let backoff = PeerBackoff::default();
    let (h, now) = ("peer.test:7443", UnixMillis(1_000));
    assert_eq!(backoff.waiting_until(h, now), None);
    backoff.failed(h, UnixMillis(3_000));
    backoff.failed(h, UnixMillis(2_000));
    assert_eq!(backoff.waiting_until(h, now), Some(UnixMillis(3_000)), "an earlier time does not shorten it");
    assert_eq!(backoff.waiting_until("other.test:7443", now), None, "per host");
    assert_eq!(backoff.waiting_until(h, UnixMillis(3_000)), None, "over when its time comes");
    backoff.answered(h);
    assert_eq!(backoff.waiting_until(h, now), None);
}

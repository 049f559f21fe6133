//! Clone schedules on the target: a Recurring Clone that runs by itself.
//! The target runs on a manual clock; the tests advance it past a due time
//! and wait (bounded) on state, never on the wall clock.

use std::sync::Arc;
use std::time::Duration;

use kmf::app::StartOptions;
use kmf::clock::{Clock, ManualClock};
use kmf::domain::auth::Role;
use kmf::rpc::pb;
use kmf::rpc::pb::clones_client::ClonesClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::clone::{admin_channel, finished, put_records};
use crate::clone_exchange::{config, ended_requests, opens_every_record, set_auto};
use crate::support::{Pki, TestNode, kmfctl_command};

const HOUR_MS: i64 = 3_600_000;

async fn on_clock(pki: &Pki, clock: &Arc<ManualClock>) -> TestNode {
    let options = StartOptions { clock: clock.clone(), ..Default::default() };
    TestNode::start_opts(pki, None, None, options).await
}

fn hourly(name: &str, source: &TestNode) -> pb::CreateCloneScheduleRequest {
    pb::CreateCloneScheduleRequest {
        name: name.into(),
        source_sys_id: source.sys_id.clone(),
        source_host: source.host.to_string(),
        every: Some(prost_types::Duration { seconds: 3600, nanos: 0 }),
        cron: String::new(),
    }
}

async fn schedules(clones: &mut ClonesClient<Channel>) -> Vec<pb::CloneSchedule> {
    clones.list_clone_schedules(pb::ListCloneSchedulesRequest {}).await.expect("list").into_inner().schedules
}

async fn clones_of(clones: &mut ClonesClient<Channel>) -> Vec<pb::CloneInfo> {
    clones.list_clones(pb::ListClonesRequest {}).await.expect("list").into_inner().clones
}

/// Moves the target's clock on by `millis`, wakes its runner, and waits
/// (bounded) until the schedule has started `runs` clones, then until the
/// newest is done; returns it.
async fn run_due(
    target: &TestNode,
    clock: &ManualClock,
    clones: &mut ClonesClient<Channel>,
    millis: i64,
    runs: u64,
) -> pb::CloneInfo {
    clock.advance_millis(millis);
    target.running().services.jobs.wake();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let started = loop {
        let s = schedules(clones).await.into_iter().next().expect("the schedule");
        if s.runs >= runs {
            assert_eq!(s.runs, runs, "one clone per due run: {s:?}");
            break s.last_clone_id;
        }
        assert!(tokio::time::Instant::now() < deadline, "waiting for run {runs}: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval; bounded by the deadline
    };
    let done = finished(clones, &started).await;
    assert_eq!(done.state, "completed", "{done:?}");
    done
}

/// Scenario 14 by itself: the schedule runs clone + exchange every hour; the
/// Recurring Clone on the source approves each exchange; the second brings
/// the same key, which is counted and not stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_runs_clone_and_recurring_exchange_twice_without_duplicate_keys() {
    let pki = Pki::new();
    let clock = ManualClock::starting_now();
    let (source, target) = (TestNode::start(&pki).await, on_clock(&pki, &clock).await);
    let mut src = source.admin(&pki).await;
    src.spec("hr", "pay", true).await;
    put_records(&mut src, 30).await;
    set_auto(&mut src, "false").await;
    let cfg = config(pb::Frequency::RecurringClone, &target, &["pay"], false);
    src.exchange.create_clone_exchange(cfg).await.expect("recurring clone");

    let mut clones = ClonesClient::new(admin_channel(&target, &pki).await);
    let made = clones.create_clone_schedule(hourly("hourly", &source)).await.expect("create");
    let made = made.into_inner().schedule.expect("schedule");
    let created = clock.now().0;
    let next = made.next_run_at.expect("next run");
    assert_eq!(next.seconds * 1000 + i64::from(next.nanos / 1_000_000), created + HOUR_MS, "{made:?}");
    assert_eq!((made.runs, made.every.map(|d| d.seconds), made.cron.as_str()), (0, Some(3600), ""));
    target.running().services.jobs.wake();
    assert!(clones_of(&mut clones).await.is_empty(), "nothing runs before its time");

    let first = run_due(&target, &clock, &mut clones, HOUR_MS, 1).await;
    let mut tgt = target.admin(&pki).await;
    let one = ended_requests(&mut tgt, 1).await;
    assert_eq!(one[0].frequency, pb::Frequency::RecurringClone as i32, "{one:?}");
    assert_eq!((one[0].status, one[0].imported_key_count), (pb::RequestStatus::RequestCompleted as i32, 1));

    let second = run_due(&target, &clock, &mut clones, HOUR_MS, 2).await;
    assert_ne!(first.clone_id, second.clone_id);
    let both = ended_requests(&mut tgt, 2).await;
    let again = both.iter().find(|r| r.request_id != one[0].request_id).expect("a second request");
    assert_eq!((again.status, again.imported_key_count), (pb::RequestStatus::RequestCompleted as i32, 0), "{again:?}");
    assert_eq!(tgt.keys_of("pay").await.len(), 1, "one key, not two");
    opens_every_record(&mut tgt, 30).await;

    let s = schedules(&mut clones).await.remove(0);
    assert_eq!((s.runs, s.skipped, s.last_clone_id.as_str()), (2, 0, second.clone_id.as_str()), "{s:?}");
    let starts = tgt.audit_entries("clone.start").await;
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert!(starts.iter().all(|e| e.actor == "system (schedule hourly)"), "{starts:?}");
}

/// A restart keeps the schedule and its due time; runs missed while the
/// daemon was down are made up once, not once each, and not twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_survives_a_restart_and_makes_up_missed_runs_once() {
    let pki = Pki::new();
    let clock = ManualClock::starting_now();
    let (source, mut target) = (TestNode::start(&pki).await, on_clock(&pki, &clock).await);
    let mut src = source.admin(&pki).await;
    src.spec("hr", "pay", true).await;
    put_records(&mut src, 10).await;
    set_auto(&mut src, "false").await;
    let add = pb::AddCloneTargetRequest { sys_id: target.sys_id.clone(), host: target.host.to_string() };
    ClonesClient::new(admin_channel(&source, &pki).await).add_clone_target(add).await.expect("clone target");
    let mut clones = ClonesClient::new(admin_channel(&target, &pki).await);
    let made = clones.create_clone_schedule(hourly("nightly", &source)).await.expect("create");
    let made = made.into_inner().schedule.expect("schedule");

    // Down for three hours and a half: three due times pass.
    target.stop().await;
    clock.advance_millis(3 * HOUR_MS + HOUR_MS / 2);
    target.restart_opts(StartOptions { clock: clock.clone(), ..Default::default() }).await;
    let mut clones = ClonesClient::new(admin_channel(&target, &pki).await);
    let kept = schedules(&mut clones).await;
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].created_at, made.created_at, "{kept:?}");
    // The runner starts at once after a restart and may already have made the
    // due run: the schedule is still due at its recorded time, or ran once.
    let still_due = kept[0].runs == 0 && kept[0].next_run_at == made.next_run_at;
    assert!(still_due || kept[0].runs == 1, "the due time survived the restart: {kept:?}");

    run_due(&target, &clock, &mut clones, 0, 1).await;
    let s = schedules(&mut clones).await.remove(0);
    let next = s.next_run_at.expect("next");
    assert_eq!(next.seconds * 1000 + i64::from(next.nanos / 1_000_000), clock.now().0 + HOUR_MS, "{s:?}");
    // Nothing else is due: the runner, woken, starts nothing more.
    let services = Arc::clone(&target.running().services);
    services.jobs.wake();
    let job = kmf::store::clone_schedule_job_id(&kmf::domain::ids::Name::parse("nightly", "n").expect("name"));
    let due = kmf::store::JobStore::new(services.store()).job(job).await.expect("read").expect("the schedule's job");
    assert!(due.lease.is_none() && due.next_due.0 > clock.now().0, "{due:?}");
    assert_eq!(clones_of(&mut clones).await.len(), 1, "missed runs are made up once");

    run_due(&target, &clock, &mut clones, HOUR_MS, 2).await;
    assert_eq!(clones_of(&mut clones).await.len(), 2);
}

/// Every refusal has its code and stores nothing; kmfctl drives the same API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_schedule_refusals_and_kmfctl() {
    let pki = Pki::new();
    let (source, target) = (TestNode::start(&pki).await, TestNode::start(&pki).await);
    let mut clones = ClonesClient::new(admin_channel(&target, &pki).await);
    let base = hourly("ok", &source);
    let cron = |c: &str| pb::CreateCloneScheduleRequest { every: None, cron: c.into(), ..base.clone() };
    let every = |s: i64| pb::CreateCloneScheduleRequest {
        every: Some(prost_types::Duration { seconds: s, nanos: 0 }),
        ..base.clone()
    };
    let cases = [
        ("both", pb::CreateCloneScheduleRequest { cron: "0 2 * * *".into(), ..base.clone() }, "not both"),
        ("neither", pb::CreateCloneScheduleRequest { every: None, ..base.clone() }, "give an interval"),
        ("too often", every(30), "one minute"),
        ("negative", every(-60), "positive"),
        ("six fields", cron("0 0 2 * * *"), "five fields"),
        ("nonsense", cron("every day at two"), "cron"),
        ("never", cron("0 0 30 2 *"), "never runs"),
        ("bad name", pb::CreateCloneScheduleRequest { name: "a name".into(), ..base.clone() }, "name"),
        ("itself", pb::CreateCloneScheduleRequest { source_sys_id: target.sys_id.clone(), ..base.clone() }, "itself"),
        ("bad host", pb::CreateCloneScheduleRequest { source_host: "nohost".into(), ..base.clone() }, "host"),
        ("bad sys_id", pb::CreateCloneScheduleRequest { source_sys_id: "XYZ".into(), ..base.clone() }, "sys_id"),
    ];
    for (what, req, says) in cases {
        let e = clones.create_clone_schedule(req).await.expect_err(what);
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e}");
        assert!(e.message().contains(says), "{what}: {}", e.message());
    }
    assert!(schedules(&mut clones).await.is_empty(), "refusals store nothing");

    clones.create_clone_schedule(cron("30 2 * * *")).await.expect("cron schedule");
    let dup = clones.create_clone_schedule(base.clone()).await.expect_err("same name");
    assert_eq!(dup.code(), Code::AlreadyExists, "{dup}");
    let gone = clones.delete_clone_schedule(pb::DeleteCloneScheduleRequest { name: "nope".into() }).await;
    assert_eq!(gone.expect_err("unknown").code(), Code::NotFound);
    let auditor = target.channel(&pki.operator("eve", &[Role::CryptographicAuditor])).await;
    let mut as_auditor = ClonesClient::new(auditor);
    let denied = as_auditor.create_clone_schedule(hourly("eve", &source)).await.expect_err("auditor");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied}");
    assert_eq!(schedules(&mut as_auditor).await.len(), 1, "an auditor may read them");

    // kmfctl: create by interval, list as JSON, delete.
    let dir = tempfile::tempdir().expect("dir");
    let files = pki.operator("admin", &[Role::Admin]);
    let run = |args: &[&str]| {
        let mut cmd = kmfctl_command(&target, &files, dir.path());
        cmd.args(args);
        async move { cmd.output().await.expect("kmfctl") }
    };
    let (src_id, src_host) = (source.sys_id.as_str(), source.host.to_string());
    let out = run(&[
        "clone",
        "schedule",
        "create",
        "--name",
        "six",
        "--source-sys-id",
        src_id,
        "--source-host",
        &src_host,
        "--every",
        "6h",
    ])
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("every 6h"), "{}", String::from_utf8_lossy(&out.stdout));
    let out = run(&["--json", "clone", "schedule", "list"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let listed = &listed["schedules"];
    let names: Vec<_> = listed.as_array().expect("array").iter().map(|s| s["name"].as_str().unwrap_or("")).collect();
    assert_eq!(names, ["ok", "six"], "{listed}");
    assert_eq!(listed[0]["cron"], "30 2 * * *");
    assert_eq!(listed[1]["every"], "21600s", "a Duration in its JSON form");
    let out = run(&["clone", "schedule", "delete", "six"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out =
        run(&["clone", "schedule", "create", "--name", "x", "--source-sys-id", src_id, "--source-host", &src_host])
            .await;
    assert!(!out.status.success(), "neither --every nor --cron is refused by kmfctl");
    assert_eq!(schedules(&mut clones).await.len(), 1);
    let mut tgt = target.admin(&pki).await;
    assert_eq!(tgt.audit_entries("clone_schedule.create").await.len(), 2);
    assert_eq!(tgt.audit_entries("clone_schedule.delete").await.len(), 1);
}

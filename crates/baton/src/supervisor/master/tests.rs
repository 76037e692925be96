//! The master's transitions with fake workers (`supervisor/fake.rs`): each test drives
//! the events the loop would see (a worker ready, one that exits, a drain's end, a
//! command) and checks the state, what each worker was told and what each requester
//! heard. Time is tokio's paused clock: a deadline passes only when nothing else can
//! happen, so the tests are exact and never wait.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

use super::builder::Config;
use super::state::{Kind, State};
use super::supervise::{Event, Supervisor, worker_event};
use crate::channel::Message;
use crate::command::{Command, Stop};
use crate::failure::RestartFailure;
use crate::signal::{Signal, SignalMap};
use crate::supervisor::Readiness;
use crate::supervisor::control::{Ending, Line, Progress, Reply};
use crate::supervisor::fake::{FakeHandle, Spawner};

const READY_TIMEOUT: Duration = Duration::from_secs(5);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

fn config(probation: Duration, hand_over: bool) -> (Config, Arc<Spawner>) {
    let spawner = Arc::new(Spawner::default());
    let cfg = Config {
        command: vec!["fake-worker".into()],
        readiness: Readiness::Notify,
        ready_timeout: READY_TIMEOUT,
        drain_signal: Signal::Term,
        drain_timeout: DRAIN_TIMEOUT,
        signals: SignalMap::default(),
        forward: Vec::new(),
        reap_orphans: false,
        hand_over,
        probation,
        fake: Some(spawner.clone()),
    };
    (cfg, spawner)
}

/// A supervisor whose first worker is starting.
fn supervisor(cfg: &Config) -> Supervisor<'_> {
    let first = Supervisor::start_worker(cfg, &[], None, 1, Kind::First, Vec::new())
        .expect("a fake worker starts");
    Supervisor::new(cfg, Vec::new(), None, first)
}

/// What the loop does with the next worker event (a readiness, an exit).
async fn next_worker_event(sv: &mut Supervisor<'_>) {
    let event = worker_event(&mut sv.state, sv.cfg).await;
    sv.handle(event).expect("not the first worker's failure");
}

/// What the loop does with the end of the next drain.
async fn next_drain(sv: &mut Supervisor<'_>) {
    let end = sv.drains.join_next().await.expect("a drain").expect("ran");
    sv.handle(Event::Drained(end)).unwrap();
}

/// A supervisor whose first worker serves.
async fn serving<'a>(cfg: &'a Config, spawner: &Spawner) -> Supervisor<'a> {
    let mut sv = supervisor(cfg);
    spawner.worker(0).ready();
    next_worker_event(&mut sv).await;
    assert_eq!(serving_generation(&sv), Some(1));
    sv
}

/// A supervisor whose second worker is in its probation (a reload's, asked by the
/// requester whose lines are returned), and both workers.
async fn in_probation<'a>(
    cfg: &'a Config,
    spawner: &Spawner,
) -> (
    Supervisor<'a>,
    UnboundedReceiver<Line>,
    FakeHandle,
    FakeHandle,
) {
    let mut sv = serving(cfg, spawner).await;
    let r = reload(&mut sv);
    let (old, new) = (spawner.worker(0), spawner.worker(1));
    new.ready();
    next_worker_event(&mut sv).await;
    assert!(matches!(sv.state, State::Probation(_)), "{:?}", sv.state);
    (sv, r, old, new)
}

fn reload(sv: &mut Supervisor<'_>) -> UnboundedReceiver<Line> {
    let (reply, lines) = Reply::channel();
    sv.handle(Event::Command(Command::Restart {
        reason: "test".into(),
        reply: Some(reply),
    }))
    .unwrap();
    lines
}

fn stop(sv: &mut Supervisor<'_>) -> UnboundedReceiver<Line> {
    let (reply, lines) = Reply::channel();
    sv.handle(Event::Command(Command::Shutdown(Stop {
        reason: "test".into(),
        deadline: None,
        skip_delay: false,
        signal: None,
        reply: Some(reply),
    })))
    .unwrap();
    lines
}

/// What each line says, in short (a final line in full).
fn steps(lines: &[Line]) -> Vec<String> {
    lines
        .iter()
        .map(|l| match l {
            Line::Progress(Progress::Spawned { generation, .. }) => {
                format!("gen {generation} spawned")
            }
            Line::Progress(Progress::Ready { generation, .. }) => format!("gen {generation} ready"),
            Line::Progress(Progress::Draining { generation, .. }) => {
                format!("gen {generation} drains")
            }
            Line::Progress(Progress::Ended {
                generation,
                how: Ending::Exited { .. },
            }) => {
                format!("gen {generation} exited")
            }
            Line::Progress(Progress::Ended {
                generation,
                how: Ending::Killed { .. },
            }) => {
                format!("gen {generation} killed")
            }
            Line::Progress(Progress::FollowsStart { generation, .. }) => {
                format!("follows the start of gen {generation}")
            }
            Line::Progress(Progress::Standby {
                generation, window, ..
            }) => {
                format!("gen {generation} stands by for {window:?}")
            }
            Line::Ok(text) => format!("ok: {text}"),
            Line::Error(text) => format!("error: {text}"),
            other => format!("{other:?}"),
        })
        .collect()
}

/// The lines a requester heard so far.
fn heard(lines: &mut UnboundedReceiver<Line>) -> Vec<Line> {
    std::iter::from_fn(|| lines.try_recv().ok()).collect()
}

fn serving_generation(sv: &Supervisor<'_>) -> Option<u32> {
    match &sv.state {
        State::Serving(g) => Some(g.generation),
        _ => None,
    }
}

fn final_line(lines: &[Line]) -> &Line {
    lines.last().expect("a final line")
}

fn exited_with(w: &FakeHandle, code: i32) -> bool {
    use std::os::unix::process::ExitStatusExt;
    w.exited().map(|s| s.into_raw()) == Some(code << 8)
}

#[tokio::test(start_paused = true)]
async fn a_reload_asked_during_the_first_start_follows_it() {
    let (cfg, spawner) = config(Duration::ZERO, false);
    let mut sv = supervisor(&cfg);
    let mut r = reload(&mut sv);
    assert_eq!(
        steps(&heard(&mut r)),
        ["follows the start of gen 1"],
        "the request waits for the start"
    );
    assert_eq!(spawner.started(), 1, "nothing else starts meanwhile");

    spawner.worker(0).ready();
    next_worker_event(&mut sv).await;
    assert!(
        matches!(sv.state, State::Reloading { serving: Some(ref g), ref start } if g.generation == 1 && start.new.generation == 2),
        "the follow-up reload starts as soon as the first worker is ready: {:?}",
        sv.state
    );
    let (old, new) = (spawner.worker(0), spawner.worker(1));
    assert!(
        matches!(&heard(&mut r)[..], [Line::Progress(Progress::Spawned { generation: 2, pid })] if *pid == new.pid())
    );

    new.ready();
    next_worker_event(&mut sv).await;
    assert_eq!(serving_generation(&sv), Some(2));
    assert_eq!(old.signals(), [Signal::Term], "the old worker drains");
    assert!(new.signals().is_empty());
    assert_eq!(steps(&heard(&mut r)), ["gen 2 ready", "gen 1 drains"]);

    old.exit(0);
    next_drain(&mut sv).await;
    assert_eq!(
        steps(&heard(&mut r)),
        [
            "gen 1 exited".to_owned(),
            format!("ok: reloaded: gen 2 pid {} serving", new.pid())
        ]
    );
    assert_eq!((sv.history.ok, sv.history.failed), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_stop_during_a_reload_abandons_it_and_drains_both_workers() {
    let (cfg, spawner) = config(Duration::ZERO, false);
    let mut sv = serving(&cfg, &spawner).await;
    let mut r = reload(&mut sv);
    assert_eq!(spawner.started(), 2);
    let (old, new) = (spawner.worker(0), spawner.worker(1));

    let mut s = stop(&mut sv);
    assert_eq!(
        final_line(&heard(&mut r)),
        &Line::Error("reload abandoned: the master is stopping".into())
    );
    assert_eq!(old.signals(), [Signal::Term]);
    assert_eq!(new.signals(), [Signal::Term], "the starting one drains too");
    assert!(
        matches!(sv.state, State::Stopping(ref st) if st.pid == Some(old.pid())),
        "the serving worker's status is the master's: {:?}",
        sv.state
    );

    // Its readiness comes too late to matter.
    new.ready();
    new.exit(0);
    old.exit(3);
    next_drain(&mut sv).await;
    next_drain(&mut sv).await;
    assert!(sv.drains.is_empty(), "the loop ends here");
    match &sv.state {
        State::Stopping(st) => assert!(exited_with(&old, 3) && st.status.is_some()),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        steps(&heard(&mut s)),
        ["gen 1 drains", "gen 1 exited"],
        "the stop's requester hears of the serving worker"
    );
    assert_eq!(spawner.started(), 2, "nothing started after the stop");
}

#[tokio::test(start_paused = true)]
async fn a_new_worker_that_never_says_ready_is_stopped_and_the_old_one_serves_on() {
    let (cfg, spawner) = config(Duration::ZERO, false);
    let mut sv = serving(&cfg, &spawner).await;
    let t0 = tokio::time::Instant::now();
    let mut r = reload(&mut sv);
    let (old, new) = (spawner.worker(0), spawner.worker(1));

    next_worker_event(&mut sv).await;
    assert_eq!(
        t0.elapsed(),
        READY_TIMEOUT,
        "given up at its deadline, not before"
    );
    assert_eq!(serving_generation(&sv), Some(1));
    assert!(old.signals().is_empty(), "the serving worker is left alone");
    assert_eq!(new.signals(), [Signal::Term]);
    let lines = heard(&mut r);
    assert!(
        matches!(final_line(&lines), Line::Error(e) if e.starts_with("reload failed: ") && e.ends_with("; the serving worker serves on")),
        "{lines:?}"
    );
    assert_eq!((sv.history.ok, sv.history.failed), (0, 1));

    // It ignores its drain signal: killed at the drain deadline.
    next_drain(&mut sv).await;
    assert_eq!(t0.elapsed(), READY_TIMEOUT + DRAIN_TIMEOUT);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(new.exited().and_then(|s| s.signal()), Some(libc::SIGKILL));
    assert_eq!(serving_generation(&sv), Some(1));
}

#[tokio::test(start_paused = true)]
async fn a_failed_start_at_a_reload_leaves_the_old_worker_serving() {
    let (cfg, spawner) = config(Duration::ZERO, false);
    let mut sv = serving(&cfg, &spawner).await;
    spawner.fail_next(RestartFailure::Spawn("no such file".into()));
    let mut r = reload(&mut sv);
    assert_eq!(serving_generation(&sv), Some(1));
    assert_eq!(
        final_line(&heard(&mut r)),
        &Line::Error("reload failed: cannot start the new generation: no such file".into())
    );
    assert!(spawner.worker(0).signals().is_empty());
    assert_eq!(sv.history.failed, 1);
}

#[tokio::test(start_paused = true)]
async fn a_death_in_probation_resumes_the_old_worker() {
    let probation = Duration::from_secs(2);
    let (cfg, spawner) = config(probation, true);
    let (mut sv, mut r, old, new) = in_probation(&cfg, &spawner).await;
    assert_eq!(
        old.told(),
        [Message::Standby {
            pid: new.pid(),
            generation: 2
        }],
        "the old worker stops accepting and stands by"
    );
    assert!(old.signals().is_empty(), "it is not told to drain");
    assert_eq!(
        steps(&heard(&mut r)),
        [
            "gen 2 spawned".to_owned(),
            "gen 2 ready".to_owned(),
            format!("gen 1 stands by for {probation:?}")
        ]
    );

    tokio::time::advance(Duration::from_millis(500)).await;
    new.exit(1);
    next_worker_event(&mut sv).await;
    assert_eq!(serving_generation(&sv), Some(1), "the old one serves on");
    assert_eq!(
        old.told().last(),
        Some(&Message::Resume),
        "and accepts again"
    );
    assert!(old.signals().is_empty());
    let lines = heard(&mut r);
    assert!(
        matches!(final_line(&lines), Line::Error(e) if e.starts_with(&format!("reload failed: the new worker gen 2 (pid {}) died 0.5 s after it was ready, within its probation", new.pid()))),
        "{lines:?}"
    );
    assert_eq!((sv.history.ok, sv.history.failed), (0, 1));
}

#[tokio::test(start_paused = true)]
async fn after_the_probation_the_old_worker_drains_and_the_reload_is_done() {
    let probation = Duration::from_secs(2);
    let (cfg, spawner) = config(probation, true);
    let (mut sv, mut r, old, new) = in_probation(&cfg, &spawner).await;
    let until = match &sv.state {
        State::Probation(p) => p.until,
        other => panic!("{other:?}"),
    };
    tokio::time::sleep_until(until).await;
    sv.handle(Event::ProbationOver).unwrap();
    assert_eq!(serving_generation(&sv), Some(2));
    assert_eq!(old.signals(), [Signal::Term], "the old worker drains now");
    old.exit(0);
    next_drain(&mut sv).await;
    assert_eq!(
        final_line(&heard(&mut r)),
        &Line::Ok(format!("reloaded: gen 2 pid {} serving", new.pid()))
    );
    assert_eq!((sv.history.ok, sv.history.failed), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_serving_worker_that_dies_is_respawned_after_the_backoff() {
    let (cfg, spawner) = config(Duration::ZERO, false);
    let mut sv = serving(&cfg, &spawner).await;
    spawner.worker(0).exit(1);
    next_worker_event(&mut sv).await;
    let respawn_at = match sv.state {
        State::Idle { respawn_at } => respawn_at,
        ref other => panic!("{other:?}"),
    };
    assert_eq!(spawner.started(), 1, "not at once");
    tokio::time::sleep_until(respawn_at).await;
    sv.handle(Event::Respawn).unwrap();
    assert_eq!(spawner.started(), 2);
    spawner.worker(1).ready();
    next_worker_event(&mut sv).await;
    assert_eq!(serving_generation(&sv), Some(2));
}

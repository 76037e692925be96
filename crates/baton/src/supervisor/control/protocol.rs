//! The control protocol as types: the one encoder and the one decoder of every line a
//! control client and a master exchange. The master, `baton stop/reload/restart/status`
//! and `baton watch` all go through here; no caller reads the text itself.
//!
//! The text stays readable by a person (`progress gen 3 pid 4242 ready in 41 ms`): the
//! typed values display as those words, and decode from them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// What a control client asks: one line, `status`, `reload`, `restart` or `stop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Request {
    /// How the master stands: answered by [`StatusItem`] lines.
    Status,
    /// A graceful reload: a new worker, then the old one drains.
    Reload,
    /// A full restart: the worker drains, then a new one starts.
    Restart,
    /// Stop the master (its worker drains).
    Stop,
}

impl Request {
    /// The request's word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Reload => "reload",
            Request::Restart => "restart",
            Request::Stop => "stop",
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Request {
    type Err = String;

    /// Exactly one of the four words (surrounding white space aside).
    fn from_str(line: &str) -> Result<Self, Self::Err> {
        match line.trim() {
            "status" => Ok(Request::Status),
            "reload" => Ok(Request::Reload),
            "restart" => Ok(Request::Restart),
            "stop" => Ok(Request::Stop),
            other => {
                let shown: String = other.chars().take(40).collect();
                Err(format!(
                    "unknown command `{}`: expected status, reload, restart or stop",
                    shown.escape_debug()
                ))
            }
        }
    }
}

/// One line of a master's answer. An answer is any number of [`Line::Progress`] and
/// [`Line::Status`] lines, then exactly one [`Line::Ok`] or [`Line::Error`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Line {
    /// A step of the request, as it happens.
    Progress(Progress),
    /// One item of the master's status.
    Status(StatusItem),
    /// The request succeeded: what came of it.
    Ok(String),
    /// The request failed: why.
    Error(String),
}

impl Line {
    /// The line's text, without the newline.
    pub fn encode(&self) -> String {
        match self {
            Line::Progress(p) => format!("progress {p}"),
            Line::Status(s) => format!("status {s}"),
            Line::Ok(text) => format!("ok {}", one_line(text)),
            Line::Error(text) => format!("error {}", one_line(text)),
        }
    }

    /// Reads one line (the newline removed); `None` if it is not a line of the
    /// protocol.
    pub fn decode(line: &str) -> Option<Line> {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "progress" => Some(Line::Progress(Progress::decode(rest))),
            "status" => StatusItem::decode(rest).map(Line::Status),
            "ok" => Some(Line::Ok(rest.to_owned())),
            "error" => Some(Line::Error(rest.to_owned())),
            _ => None,
        }
    }
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// A step of a reload, restart or stop, as the master reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Progress {
    /// A new worker started (not ready yet).
    Spawned {
        /// Its generation.
        generation: u32,
        /// Its PID.
        pid: u32,
    },
    /// The new worker is ready, this long after it was asked for.
    Ready {
        /// Its generation.
        generation: u32,
        /// Its PID.
        pid: u32,
        /// From the request to ready.
        took: Duration,
    },
    /// A worker was told to drain.
    Draining {
        /// Its generation.
        generation: u32,
        /// Its PID.
        pid: u32,
        /// Sockets it holds besides the listeners (its connections, roughly), where
        /// known.
        open_sockets: Option<usize>,
        /// Nothing serves meanwhile (a full restart): clients wait in the accept queue.
        queued: bool,
    },
    /// A draining worker is gone.
    Ended {
        /// Its generation.
        generation: u32,
        /// How it ended.
        how: Ending,
    },
    /// A reload asked while a worker starts: one more reload follows it.
    FollowsStart {
        /// What is in progress: `start`, `reload`, `restart` or `respawn`.
        kind: String,
        /// The generation starting.
        generation: u32,
        /// Its PID.
        pid: u32,
    },
    /// The old worker stands by for the new one's probation (see
    /// `MasterBuilder::probation`): it drains once that ends, or serves on if the new one
    /// dies within it.
    Standby {
        /// The old worker's generation.
        generation: u32,
        /// Its PID.
        pid: u32,
        /// The probation.
        window: Duration,
    },
    /// A reload asked during a full restart joins it.
    JoinedRestart,
    /// A stop asked while the master already stops.
    AlreadyStopping,
    /// A step this version does not know (a newer master).
    Other(String),
}

/// How a draining worker ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ending {
    /// It exited by itself.
    Exited {
        /// Its status, e.g. `exit status: 0`.
        status: String,
        /// After the drain signal.
        after: Duration,
    },
    /// It was killed (drain timeout, or a stop signal again).
    Killed {
        /// After the drain signal.
        after: Duration,
    },
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Progress::Spawned { generation, pid } => {
                write!(f, "spawned gen {generation} pid {pid}")
            }
            Progress::Ready {
                generation,
                pid,
                took,
            } => write!(
                f,
                "gen {generation} pid {pid} ready in {} ms",
                took.as_millis()
            ),
            Progress::Draining {
                generation,
                pid,
                open_sockets,
                queued,
            } => {
                write!(f, "draining gen {generation} pid {pid}")?;
                if let Some(n) = open_sockets {
                    write!(f, ": {n} open sockets")?;
                }
                if *queued {
                    f.write_str("; clients wait in the accept queue")?;
                }
                Ok(())
            }
            Progress::Ended { generation, how } => match how {
                Ending::Exited { status, after } => {
                    write!(
                        f,
                        "gen {generation} exited ({status}) after {}",
                        secs(*after)
                    )
                }
                Ending::Killed { after } => {
                    write!(f, "gen {generation} killed after {}", secs(*after))
                }
            },
            Progress::FollowsStart {
                kind,
                generation,
                pid,
            } => write!(
                f,
                "a reload follows the {kind} in progress (gen {generation} pid {pid})"
            ),
            Progress::Standby {
                generation,
                pid,
                window,
            } => write!(
                f,
                "standing by: gen {generation} pid {pid} for {} (probation)",
                secs(*window)
            ),
            Progress::JoinedRestart => f.write_str("joined the full restart in progress"),
            Progress::AlreadyStopping => f.write_str("already stopping"),
            Progress::Other(text) => f.write_str(&one_line(text)),
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// `"N s"` with a fractional count of seconds.
fn parse_secs(s: &str) -> Option<Duration> {
    Duration::try_from_secs_f64(s.strip_suffix(" s")?.parse().ok()?).ok()
}

/// `gen G pid P`, then the rest.
fn gen_pid(s: &str) -> Option<(u32, u32, &str)> {
    let rest = s.strip_prefix("gen ")?;
    let (generation, rest) = rest.split_once(" pid ")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let (pid, rest) = rest.split_at(digits);
    Some((
        generation.parse().ok()?,
        pid.parse().ok()?,
        rest.strip_prefix(' ').unwrap_or(rest),
    ))
}

impl Progress {
    /// Reads a progress line's text (after `progress `); what it does not recognise is
    /// [`Progress::Other`].
    pub fn decode(text: &str) -> Progress {
        Progress::parse(text).unwrap_or_else(|| Progress::Other(text.to_owned()))
    }

    fn parse(text: &str) -> Option<Progress> {
        if let Some(rest) = text.strip_prefix("spawned ") {
            let (generation, pid, rest) = gen_pid(rest)?;
            return rest
                .is_empty()
                .then_some(Progress::Spawned { generation, pid });
        }
        if let Some(rest) = text.strip_prefix("draining ") {
            let (generation, pid, _) = gen_pid(rest)?;
            let open_sockets = rest
                .split_once(": ")
                .and_then(|(_, r)| r.split_once(" open sockets"))
                .and_then(|(n, _)| n.parse().ok());
            return Some(Progress::Draining {
                generation,
                pid,
                open_sockets,
                queued: rest.ends_with("; clients wait in the accept queue"),
            });
        }
        if let Some(rest) = text.strip_prefix("standing by: ") {
            let (generation, pid, rest) = gen_pid(rest)?;
            let window = rest.strip_prefix("for ")?.strip_suffix(" (probation)")?;
            return Some(Progress::Standby {
                generation,
                pid,
                window: parse_secs(window)?,
            });
        }
        if let Some(rest) = text.strip_prefix("a reload follows the ") {
            let (kind, rest) = rest.split_once(" in progress (")?;
            let (generation, pid, _) = gen_pid(rest.strip_suffix(')')?)?;
            return Some(Progress::FollowsStart {
                kind: kind.to_owned(),
                generation,
                pid,
            });
        }
        match text {
            "joined the full restart in progress" => return Some(Progress::JoinedRestart),
            "already stopping" => return Some(Progress::AlreadyStopping),
            _ => {}
        }
        if let Some((generation, pid, rest)) = gen_pid(text)
            && let Some(ms) = rest
                .strip_prefix("ready in ")
                .and_then(|r| r.strip_suffix(" ms"))
        {
            return Some(Progress::Ready {
                generation,
                pid,
                took: Duration::from_millis(ms.parse().ok()?),
            });
        }
        let rest = text.strip_prefix("gen ")?;
        let (generation, rest) = rest.split_once(' ')?;
        let generation = generation.parse().ok()?;
        let how = if let Some(after) = rest.strip_prefix("killed after ") {
            Ending::Killed {
                after: parse_secs(after)?,
            }
        } else {
            let rest = rest.strip_prefix("exited (")?;
            let (status, after) = rest.rsplit_once(") after ")?;
            Ending::Exited {
                status: status.to_owned(),
                after: parse_secs(after)?,
            }
        };
        Some(Progress::Ended { generation, how })
    }
}

/// What a master is doing ([`Status::state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MasterState {
    /// A worker serves; nothing else is under way.
    Serving,
    /// A worker starts while none serves: `start` (the first), `restart` (after a full
    /// restart's drain) or `respawn` (after a crash).
    Starting(String),
    /// A new worker starts beside the serving one.
    Reloading,
    /// A full restart: the worker drains before a new one starts.
    Restarting,
    /// A reload's new worker serves; the old one stands by until its probation ends.
    Probation,
    /// No worker: one starts again after a pause.
    Respawning,
    /// The master stops; its workers drain.
    Stopping,
    /// A state this version does not know (a newer master).
    Other(String),
}

impl fmt::Display for MasterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MasterState::Serving => "serving",
            MasterState::Starting(kind) => kind,
            MasterState::Reloading => "reload",
            MasterState::Restarting => "restarting",
            MasterState::Probation => "probation",
            MasterState::Respawning => "respawning",
            MasterState::Stopping => "stopping",
            MasterState::Other(s) => s,
        })
    }
}

impl MasterState {
    fn decode(s: &str) -> MasterState {
        match s {
            "serving" => MasterState::Serving,
            "reload" => MasterState::Reloading,
            "restarting" => MasterState::Restarting,
            "probation" => MasterState::Probation,
            "respawning" => MasterState::Respawning,
            "stopping" => MasterState::Stopping,
            "start" | "restart" | "respawn" => MasterState::Starting(s.to_owned()),
            other => MasterState::Other(other.to_owned()),
        }
    }
}

/// A worker's part in the master's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// It serves.
    Serving,
    /// It starts and is not ready yet.
    Starting,
    /// It was told to drain.
    Draining,
    /// It stands by, not accepting, for the probation of the worker that replaced it.
    Standby,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Serving => "serving",
            Role::Starting => "starting",
            Role::Draining => "draining",
            Role::Standby => "standby",
        }
    }

    fn decode(s: &str) -> Option<Role> {
        match s {
            "serving" => Some(Role::Serving),
            "starting" => Some(Role::Starting),
            "draining" => Some(Role::Draining),
            "standby" => Some(Role::Standby),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One worker in the master's status.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStatus {
    /// Its generation.
    pub generation: u32,
    /// Its PID.
    pub pid: u32,
    /// Its part.
    pub role: Role,
    /// How long it has been in that part.
    pub age: Duration,
    /// Sockets it holds besides the listeners (its connections, roughly), where known.
    pub open_sockets: Option<usize>,
}

/// The last reload or restart in the master's status.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LastReload {
    /// `reload` or `restart`.
    pub kind: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// How long it took (to ready, or to the failure).
    pub took: Duration,
    /// How long ago it ended.
    pub ago: Duration,
    /// What came of it, in words.
    pub detail: String,
}

/// One item of the master's status: one `status` line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatusItem {
    /// The master's PID.
    MasterPid(u32),
    /// How long it has run.
    Uptime(Duration),
    /// What it is doing.
    State(MasterState),
    /// The serving worker's generation (0: none).
    Generation(u32),
    /// A worker.
    Worker(WorkerStatus),
    /// A listening socket: name and address.
    Listener {
        /// Its name.
        name: String,
        /// Its address, as text.
        addr: String,
    },
    /// Reloads and restarts that succeeded and failed.
    Reloads {
        /// Succeeded.
        ok: u64,
        /// Failed.
        failed: u64,
    },
    /// The last reload or restart.
    Last(LastReload),
}

impl fmt::Display for StatusItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusItem::MasterPid(pid) => write!(f, "master_pid {pid}"),
            StatusItem::Uptime(d) => write!(f, "uptime_ms {}", d.as_millis()),
            StatusItem::State(s) => write!(f, "state {s}"),
            StatusItem::Generation(g) => write!(f, "generation {g}"),
            StatusItem::Worker(w) => write!(
                f,
                "worker {} {} {} {} {}",
                w.generation,
                w.pid,
                w.role,
                w.age.as_millis(),
                w.open_sockets
                    .map_or_else(|| "-".to_owned(), |n| n.to_string())
            ),
            StatusItem::Listener { name, addr } => write!(f, "listener {name} {addr}"),
            StatusItem::Reloads { ok, failed } => write!(f, "reloads {ok} {failed}"),
            StatusItem::Last(l) => write!(
                f,
                "last {} {} {} {} {}",
                l.kind,
                if l.ok { "ok" } else { "failed" },
                l.took.as_millis(),
                l.ago.as_millis(),
                one_line(&l.detail)
            ),
        }
    }
}

impl StatusItem {
    fn decode(text: &str) -> Option<StatusItem> {
        let (key, rest) = text.split_once(' ').unwrap_or((text, ""));
        let mut f = rest.splitn(5, ' ');
        let mut next = || f.next().unwrap_or_default();
        let ms = |s: &str| s.parse::<u64>().ok().map(Duration::from_millis);
        Some(match key {
            "master_pid" => StatusItem::MasterPid(next().parse().ok()?),
            "uptime_ms" => StatusItem::Uptime(ms(next())?),
            "state" => StatusItem::State(MasterState::decode(rest)),
            "generation" => StatusItem::Generation(next().parse().ok()?),
            "worker" => StatusItem::Worker(WorkerStatus {
                generation: next().parse().ok()?,
                pid: next().parse().ok()?,
                role: Role::decode(next())?,
                age: ms(next())?,
                open_sockets: next().parse().ok(),
            }),
            "listener" => {
                let (name, addr) = rest.split_once(' ')?;
                StatusItem::Listener {
                    name: name.to_owned(),
                    addr: addr.to_owned(),
                }
            }
            "reloads" => StatusItem::Reloads {
                ok: next().parse().ok()?,
                failed: next().parse().ok()?,
            },
            "last" => StatusItem::Last(LastReload {
                kind: next().to_owned(),
                ok: next() == "ok",
                took: ms(next())?,
                ago: ms(next())?,
                detail: next().to_owned(),
            }),
            _ => return None,
        })
    }
}

/// A master's status, as `status` answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Status {
    /// The master's PID.
    pub master_pid: u32,
    /// How long it has run.
    pub uptime: Duration,
    /// What it is doing.
    pub state: MasterState,
    /// The serving worker's generation (0: none).
    pub generation: u32,
    /// Its workers: serving, starting, draining.
    pub workers: Vec<WorkerStatus>,
    /// Its listening sockets: name and address.
    pub listeners: Vec<(String, String)>,
    /// Reloads and restarts that succeeded.
    pub reloads_ok: u64,
    /// Reloads and restarts that failed.
    pub reloads_failed: u64,
    /// The last reload or restart.
    pub last: Option<LastReload>,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            master_pid: 0,
            uptime: Duration::ZERO,
            state: MasterState::Other(String::new()),
            generation: 0,
            workers: Vec::new(),
            listeners: Vec::new(),
            reloads_ok: 0,
            reloads_failed: 0,
            last: None,
        }
    }
}

impl Status {
    /// The status as the items its lines carry, in the order they are sent.
    pub fn items(&self) -> Vec<StatusItem> {
        let mut items = vec![
            StatusItem::MasterPid(self.master_pid),
            StatusItem::Uptime(self.uptime),
            StatusItem::State(self.state.clone()),
            StatusItem::Generation(self.generation),
        ];
        items.extend(self.workers.iter().cloned().map(StatusItem::Worker));
        items.extend(
            self.listeners
                .iter()
                .map(|(name, addr)| StatusItem::Listener {
                    name: name.clone(),
                    addr: addr.clone(),
                }),
        );
        items.push(StatusItem::Reloads {
            ok: self.reloads_ok,
            failed: self.reloads_failed,
        });
        items.extend(self.last.clone().map(StatusItem::Last));
        items
    }

    /// The status from its items (in any order; unknown ones were dropped by the
    /// decoder).
    pub fn from_items(items: impl IntoIterator<Item = StatusItem>) -> Status {
        let mut s = Status::default();
        for item in items {
            match item {
                StatusItem::MasterPid(p) => s.master_pid = p,
                StatusItem::Uptime(d) => s.uptime = d,
                StatusItem::State(st) => s.state = st,
                StatusItem::Generation(g) => s.generation = g,
                StatusItem::Worker(w) => s.workers.push(w),
                StatusItem::Listener { name, addr } => s.listeners.push((name, addr)),
                StatusItem::Reloads { ok, failed } => {
                    s.reloads_ok = ok;
                    s.reloads_failed = failed;
                }
                StatusItem::Last(l) => s.last = Some(l),
            }
        }
        s
    }

    /// The serving worker, if one serves.
    pub fn serving(&self) -> Option<&WorkerStatus> {
        self.workers.iter().find(|w| w.role == Role::Serving)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_exactly() {
        assert_eq!("reload".parse(), Ok(Request::Reload));
        assert_eq!(" stop \r".parse(), Ok(Request::Stop));
        assert_eq!("status".parse(), Ok(Request::Status));
        assert_eq!("restart".parse(), Ok(Request::Restart));
        for bad in ["RELOAD", "reload now", ""] {
            assert!(bad.parse::<Request>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_progress_step_round_trips_through_its_text() {
        let steps = [
            Progress::Spawned {
                generation: 7,
                pid: 4242,
            },
            Progress::Ready {
                generation: 7,
                pid: 4242,
                took: Duration::from_millis(41),
            },
            Progress::Draining {
                generation: 6,
                pid: 4100,
                open_sockets: Some(17),
                queued: false,
            },
            Progress::Draining {
                generation: 6,
                pid: 4100,
                open_sockets: None,
                queued: true,
            },
            Progress::Ended {
                generation: 6,
                how: Ending::Exited {
                    status: "exit status: 0".into(),
                    after: Duration::from_millis(1020),
                },
            },
            Progress::Ended {
                generation: 6,
                how: Ending::Killed {
                    after: Duration::from_secs(30),
                },
            },
            Progress::FollowsStart {
                kind: "reload".into(),
                generation: 8,
                pid: 9,
            },
            Progress::Standby {
                generation: 6,
                pid: 4100,
                window: Duration::from_millis(2500),
            },
            Progress::JoinedRestart,
            Progress::AlreadyStopping,
            Progress::Other("something new".into()),
        ];
        for step in steps {
            let line = Line::Progress(step.clone()).encode();
            assert_eq!(Line::decode(&line), Some(Line::Progress(step)), "{line}");
        }
        assert_eq!(
            Line::Progress(Progress::Ready {
                generation: 3,
                pid: 12,
                took: Duration::from_millis(41)
            })
            .encode(),
            "progress gen 3 pid 12 ready in 41 ms"
        );
    }

    #[test]
    fn a_status_round_trips_through_its_lines() {
        let status = Status {
            master_pid: 10,
            uptime: Duration::from_secs(61),
            state: MasterState::Serving,
            generation: 3,
            workers: vec![
                WorkerStatus {
                    generation: 3,
                    pid: 12,
                    role: Role::Serving,
                    age: Duration::from_millis(500),
                    open_sockets: Some(4),
                },
                WorkerStatus {
                    generation: 2,
                    pid: 11,
                    role: Role::Draining,
                    age: Duration::from_millis(900),
                    open_sockets: None,
                },
            ],
            listeners: vec![
                ("http".into(), "127.0.0.1:8080".into()),
                ("admin".into(), "unix:/run/a b.sock".into()),
            ],
            reloads_ok: 2,
            reloads_failed: 1,
            last: Some(LastReload {
                kind: "reload".into(),
                ok: true,
                took: Duration::from_millis(42),
                ago: Duration::from_millis(500),
                detail: "gen 3 pid 12".into(),
            }),
        };
        let lines: Vec<String> = status
            .items()
            .into_iter()
            .map(|i| Line::Status(i).encode())
            .collect();
        assert_eq!(lines[4], "status worker 3 12 serving 500 4");
        assert_eq!(lines[5], "status worker 2 11 draining 900 -");
        let items = lines.iter().filter_map(|l| match Line::decode(l) {
            Some(Line::Status(item)) => Some(item),
            _ => None,
        });
        assert_eq!(Status::from_items(items), status);
        for state in [
            "start",
            "restart",
            "respawn",
            "reload",
            "restarting",
            "probation",
        ] {
            assert_eq!(MasterState::decode(state).to_string(), state);
        }
    }

    #[test]
    fn final_lines_and_garbage() {
        assert_eq!(
            Line::decode("ok reloaded: gen 7 pid 1 serving"),
            Some(Line::Ok("reloaded: gen 7 pid 1 serving".into()))
        );
        assert_eq!(Line::Error("two\nlines".into()).encode(), "error two lines");
        assert_eq!(Line::decode("GET / HTTP/1.1"), None);
        assert_eq!(Line::decode("status nonsense 1"), None);
    }
}

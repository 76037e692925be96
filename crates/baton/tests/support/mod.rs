//! Test harness: runs the real `hello` demo as a child process on a free port, reads its
//! log, sends it real signals, and talks to it with a real HTTP client.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// How long any wait for an event may take. Generous: a loaded 2-core machine is slow,
/// and a wait that ends early because the event happened costs nothing.
pub const WAIT: Duration = Duration::from_secs(60);

/// The `hello` example, built by `cargo test` next to this test's own executable.
pub fn hello_exe() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executables live in target/<profile>/deps");
    let hello = dir.join("examples").join("hello");
    assert!(
        hello.exists(),
        "{} is missing: run the tests with `cargo test` (which builds the examples) or `cargo build --examples` first",
        hello.display()
    );
    hello
}

#[derive(Default)]
struct Log {
    lines: Vec<String>,
    closed: bool,
}

/// A running demo server.
pub struct Demo {
    child: Child,
    log: Arc<(Mutex<Log>, Condvar)>,
    pub addr: String,
    pub pid: u32,
    pub dir: tempfile::TempDir,
    /// The program as started (argv[0]): later generations run it too.
    program: std::ffi::OsString,
}

impl Demo {
    /// Starts `hello --listen 127.0.0.1:0 ARGS` and waits until it listens.
    pub fn start(args: &[&str]) -> Demo {
        Demo::start_with(&["--listen", "127.0.0.1:0"], args)
    }

    pub fn start_with(listen: &[&str], args: &[&str]) -> Demo {
        let mut cmd = Command::new(hello_exe());
        cmd.args(listen).args(args);
        Demo::spawn(cmd)
    }

    /// Runs `cmd` (which must run the demo) and waits for its first listening line.
    pub fn spawn(cmd: Command) -> Demo {
        Demo::spawn_in(tempfile::tempdir().expect("temp dir"), cmd)
    }

    /// Copies the demo into a fresh directory as `app` (so that a test can replace
    /// the binary on disk) and runs it there with `args`.
    pub fn start_copy(args: &[&str]) -> Demo {
        let dir = tempfile::tempdir().expect("temp dir");
        let app = dir.path().join("app");
        std::fs::copy(hello_exe(), &app).expect("copy the demo");
        let mut cmd = Command::new(&app);
        cmd.args(["--listen", "127.0.0.1:0"]).args(args);
        Demo::spawn_in(dir, cmd)
    }

    /// Starts the demo with its admin endpoints on a TCP port of their own, authorised
    /// by `token` (in a file in the demo's directory); returns it and the admin address.
    pub fn start_admin(token: &str) -> (Demo, String) {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("token");
        std::fs::write(&file, format!("{token}\n")).unwrap();
        let mut cmd = Command::new(hello_exe());
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--admin-token-file",
        ])
        .arg(&file);
        let demo = Demo::spawn_in(dir, cmd);
        let admin = between(&demo.wait_log("listener=admin"), "listening on [", "]").to_owned();
        (demo, admin)
    }

    /// The copy run by [`Demo::start_copy`].
    pub fn app(&self) -> PathBuf {
        self.dir.path().join("app")
    }

    /// Replaces the program on disk as a deploy would: a new file renamed over the old
    /// one (the running process keeps its own, now deleted, file).
    pub fn replace_app(&self, contents: &[u8]) {
        use std::os::unix::fs::PermissionsExt;
        let tmp = self.dir.path().join("app.new");
        std::fs::write(&tmp, contents).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, self.app()).unwrap();
    }

    pub fn spawn_in(dir: tempfile::TempDir, mut cmd: Command) -> Demo {
        // Private directories (notify sockets) in the test's own directory: one left
        // by a process the test kills goes with the directory.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).expect("the demo's temporary directory");
        cmd.env("TMPDIR", &tmp).env_remove("XDG_RUNTIME_DIR");
        let program = cmd.get_program().to_owned();
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // A freshly written copy of the demo can be "busy" for a moment: another test
        // thread forked while the copy's file was open for writing, and its child holds
        // that descriptor until it execs. Bounded retries.
        let mut attempts = 0;
        let mut child = loop {
            match cmd.spawn() {
                Ok(child) => break child,
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && attempts < 100 => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("spawn the demo: {e}"),
            }
        };
        let log = Arc::new((Mutex::new(Log::default()), Condvar::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[demo] {line}");
                let (m, cv) = &*sink;
                m.lock().unwrap_or_else(|e| e.into_inner()).lines.push(line);
                cv.notify_all();
            }
            let (m, cv) = &*sink;
            m.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
            cv.notify_all();
        });
        let pid = child.id();
        let mut demo = Demo {
            child,
            log,
            addr: String::new(),
            pid,
            dir,
            program,
        };
        let line = demo.wait_log("started listening on [");
        demo.addr = between(&line, "listening on [", "]").to_owned();
        demo
    }

    /// Waits for a log line containing `pat` (searching every line so far) and returns it.
    pub fn wait_log(&self, pat: &str) -> String {
        self.wait_log_nth(pat, 1)
    }

    /// Waits until `n` log lines contain `pat`; returns the n-th.
    pub fn wait_log_nth(&self, pat: &str, n: usize) -> String {
        off_runtime(|| self.wait_log_nth_blocking(pat, n))
    }

    fn wait_log_nth_blocking(&self, pat: &str, n: usize) -> String {
        let (m, cv) = &*self.log;
        let deadline = Instant::now() + WAIT;
        let mut log = m.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(line) = log.lines.iter().filter(|l| l.contains(pat)).nth(n - 1) {
                return line.clone();
            }
            let now = Instant::now();
            assert!(
                !log.closed && now < deadline,
                "no log line #{n} containing {pat:?} ({}); log so far:\n{}",
                if log.closed {
                    "the log closed"
                } else {
                    "timed out"
                },
                log.lines.join("\n")
            );
            log = cv.wait_timeout(log, deadline - now).unwrap().0;
        }
    }

    /// Every log line so far.
    pub fn log(&self) -> Vec<String> {
        self.log
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lines
            .clone()
    }

    /// Sends a real signal to the demo (and only to it), e.g. `"TERM"`.
    pub fn signal(&self, sig: &str) {
        signal_pid(self.pid, sig);
    }

    /// Waits until generation `n` reported ready and, for a restart, until the
    /// previous generation stopped accepting (after its probation: from then on every
    /// new connection goes to generation `n`); returns its PID.
    pub fn wait_ready(&self, generation: u32) -> u32 {
        let pid = self.ready_pid(generation);
        if generation > 1 {
            let previous = self.ready_pid(generation - 1);
            self.wait_log(&format!(
                "stopped accepting on [{}]; the next generation serves it pid={previous}",
                self.addr
            ));
        }
        pid
    }

    /// Waits until generation `n` reported ready (its predecessor may still stand by
    /// for its probation); returns its PID.
    pub fn ready_pid(&self, generation: u32) -> u32 {
        let line = self.wait_log(&format!("generation={generation} listeners="));
        between(&line, "server ready pid=", " ").parse().unwrap()
    }

    /// Every PID the demo's processes logged (all generations), in order of appearance.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for line in self.log() {
            for part in line.split(' ') {
                if let Some(p) = part.strip_prefix("pid=").and_then(|p| p.parse().ok())
                    && !pids.contains(&p)
                {
                    pids.push(p);
                }
            }
        }
        pids
    }
}

/// `true` while process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(") ").map(|(_, r)| r.chars().next());
            state != Some(Some('Z'))
        }
        Err(_) => false,
    }
}

/// `SIGKILL` to the process group `pgid` (a master's worker leads one) while a process
/// of it still runs: a group's ID cannot be reused while it has a member, so what is
/// killed is what the worker left.
pub fn kill_group(pgid: u32) {
    use rustix::process::{Pid, Signal, kill_process_group};
    let members = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.split(' ').nth(2)?.parse::<u32>().ok())
                == Some(pgid)
        })
        .count();
    if members > 0
        && let Some(pgid) = Pid::from_raw(pgid as i32)
    {
        let _ = kill_process_group(pgid, Signal::KILL);
    }
}

/// `true` while process `pid` exists, zombies included.
pub fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Open descriptors of process `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A port the kernel just handed out on loopback, for a program that binds it itself.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (bounded) until `GET /pid` on a new connection is answered by `pid`.
pub async fn wait_answered_by(addr: &str, pid: u32) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(resp) = get(addr, "/pid").await
            && resp.body.trim() == pid.to_string()
        {
            return;
        }
        assert!(Instant::now() < deadline, "{pid} never answered on {addr}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (bounded) until `cond` holds.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends a real signal to process `pid`, one the test started (directly or as a later
/// generation of the demo).
pub fn signal_pid(pid: u32, sig: &str) {
    {
        use rustix::process::{Pid, Signal, kill_process};
        let sig = match sig {
            "TERM" => Signal::TERM,
            "INT" => Signal::INT,
            "QUIT" => Signal::QUIT,
            "HUP" => Signal::HUP,
            "USR1" => Signal::USR1,
            "USR2" => Signal::USR2,
            "KILL" => Signal::KILL,
            "STOP" => Signal::STOP,
            "CONT" => Signal::CONT,
            other => panic!("the harness does not know signal {other}"),
        };
        let pid = Pid::from_raw(pid as i32).expect("a child's pid is positive");
        kill_process(pid, sig).expect("signal the demo");
    }
}

impl Demo {
    /// Waits for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        off_runtime(|| self.wait_exit_blocking())
    }

    fn wait_exit_blocking(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the log reader see the last lines: until the log closes, or for a
                // moment if a later generation (which inherited it) keeps it open.
                let (m, cv) = &*self.log;
                let mut log = m.lock().unwrap_or_else(|e| e.into_inner());
                let until = Instant::now() + Duration::from_secs(1);
                while !log.closed && Instant::now() < until {
                    log = cv
                        .wait_timeout(log, Duration::from_millis(100))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the demo did not exit within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts `GET /sleep?secs=SECS` on a new connection and returns once the server
    /// logged its start: the request is in flight.
    pub fn sleep_in_flight(&self, secs: &str) -> tokio::task::JoinHandle<Result<Resp, BoxError>> {
        let addr = self.addr.clone();
        let path = format!("/sleep?secs={secs}");
        let request = tokio::spawn(async move { get(&addr, &path).await });
        self.wait_log(&format!("sleep {secs}s: start"));
        request
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Later generations were started by the demo, not by us: end those that still
        // run (each logged its PID; check that it is still the demo before killing).
        for pid in self.pids() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
            // The demo as started, or as a tool (socket activation) executed it.
            let ours = [self.program.as_os_str(), hello_exe().as_os_str()]
                .iter()
                .any(|p| argv0 == std::os::unix::ffi::OsStrExt::as_bytes(*p));
            if pid != self.pid && ours && alive(pid) {
                signal_pid(pid, "KILL");
            }
        }
    }
}

/// What a client loop saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: u64,
    pub failures: Vec<String>,
    pub pids: std::collections::BTreeSet<u32>,
}

/// Clients sending `GET /pid` back to back until stopped: each on a new connection,
/// or each on a keep-alive connection it replaces when the server answers with
/// `Connection: close`. Nothing is retried: an error is a failure.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
}

impl Load {
    pub fn start(addr: &str, workers: usize, keep_alive: bool) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..workers)
            .map(|_| {
                let (addr, stop) = (addr.to_owned(), Arc::clone(&stop));
                tokio::spawn(async move { client_loop(&addr, keep_alive, &stop).await })
            })
            .collect();
        Load { stop, tasks }
    }

    pub async fn stop(self) -> Tally {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = Tally::default();
        for t in self.tasks {
            let t = t.await.unwrap();
            all.ok += t.ok;
            all.failures.extend(t.failures);
            all.pids.extend(t.pids);
        }
        all
    }
}

async fn client_loop(addr: &str, keep_alive: bool, stop: &std::sync::atomic::AtomicBool) -> Tally {
    let mut tally = Tally::default();
    let mut conn: Option<Http1> = None;
    let started = Instant::now();
    // Bounded in time and count whatever happens.
    for _ in 0..10_000_000u64 {
        if stop.load(std::sync::atomic::Ordering::Relaxed) || started.elapsed() > 4 * WAIT {
            break;
        }
        let res = tokio::time::timeout(Duration::from_secs(10), async {
            if !keep_alive {
                return get(addr, "/pid").await;
            }
            if conn.is_none() {
                conn = Some(Http1::connect(addr).await?);
            }
            conn.as_mut().expect("connected above").get("/pid").await
        })
        .await;
        match res {
            Ok(Ok(resp)) if resp.status == StatusCode::OK => {
                tally.ok += 1;
                if let Ok(pid) = resp.body.trim().parse() {
                    tally.pids.insert(pid);
                }
                if resp.closes() {
                    conn = None;
                }
            }
            Ok(Ok(resp)) => {
                tally.failures.push(format!("status {}", resp.status));
                conn = None;
            }
            Ok(Err(e)) => {
                tally.failures.push(format!("error: {e}"));
                conn = None;
            }
            Err(_) => {
                tally.failures.push("timed out after 10s".into());
                conn = None;
            }
        }
    }
    tally
}

pub fn between<'a>(s: &'a str, start: &str, end: &str) -> &'a str {
    let from = s.find(start).expect("start marker") + start.len();
    let to = s[from..].find(end).expect("end marker") + from;
    &s[from..to]
}

/// A complete HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn closes(&self) -> bool {
        self.headers
            .get(hyper::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
    }
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One HTTP/1.1 connection, kept alive between requests.
pub struct Http1 {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    conn: tokio::task::JoinHandle<Result<(), hyper::Error>>,
    host: String,
}

impl Http1 {
    pub async fn connect(addr: &str) -> Result<Http1, BoxError> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        Ok(Http1 {
            sender,
            conn: tokio::spawn(conn),
            host: addr.to_owned(),
        })
    }

    pub async fn request(&mut self, method: &str, path: &str) -> Result<Resp, BoxError> {
        self.sender.ready().await?;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.host)
            .body(Empty::new())?;
        let res = self.sender.send_request(req).await?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Resp {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    pub async fn get(&mut self, path: &str) -> Result<Resp, BoxError> {
        self.request("GET", path).await
    }

    /// Waits for the *server* to end the connection; `Ok` when it ended cleanly.
    pub async fn closed(self) -> Result<(), BoxError> {
        // Keep the sender while waiting: dropping it makes the client close the
        // connection itself, which is not what is being checked.
        let Http1 { sender, conn, .. } = self;
        let ended = tokio::time::timeout(WAIT, conn).await;
        drop(sender);
        ended??.map_err(Into::into)
    }
}

/// A request on each connection: every one answered by `pid` on that same connection,
/// without `Connection: close`.
pub async fn all_answered_by(conns: &mut [Http1], pid: u32, when: &str) {
    for (i, c) in conns.iter_mut().enumerate() {
        let r = c
            .get("/pid")
            .await
            .unwrap_or_else(|e| panic!("{when}, connection {i}: {e}"));
        assert_eq!(r.body.trim(), pid.to_string(), "{when}, connection {i}");
        assert!(!r.closes(), "{when}, connection {i} asked to close");
    }
}

/// A request on a new connection.
pub async fn get(addr: &str, path: &str) -> Result<Resp, BoxError> {
    Http1::connect(addr).await?.get(path).await
}

pub async fn post(addr: &str, path: &str) -> Result<Resp, BoxError> {
    Http1::connect(addr).await?.request("POST", path).await
}

/// Waits (bounded) until the server has read everything the client sent on the
/// connection from local port `client_port` to `server`: the server side's receive
/// queue in `/proc/net/tcp` is empty.
pub fn wait_read_by_server(server: &str, client_port: u16) {
    let server_port: u16 = server.rsplit(':').next().unwrap().parse().unwrap();
    let local = format!("0100007F:{server_port:04X}");
    let remote = format!("0100007F:{client_port:04X}");
    wait_until("the server read the bytes sent", || {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        table.lines().skip(1).any(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address rem_address st tx_queue:rx_queue ...
            f.len() > 4 && f[1] == local && f[2] == remote && f[4].ends_with(":00000000")
        })
    });
}

/// Waits (bounded) until the demo's `/stats` counter `name` satisfies `ok`.
pub async fn wait_stat(addr: &str, name: &str, ok: impl Fn(u64) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let n = stat(addr, name).await;
        if ok(n) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} stayed at {n}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The demo's `/stats` counter `name`, asked on a new connection.
pub async fn stat(addr: &str, name: &str) -> u64 {
    let body = get(addr, "/stats").await.unwrap().body;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {body}"))
        .trim()
        .parse()
        .unwrap()
}

/// Runs a blocking wait (a log line, an exit) without stalling the async clients of a
/// multi-threaded test runtime.
fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

import http.server, os, signal, socket, sys, threading, time

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # A connection that sends nothing holds its thread, and the drain joins every
    # thread: at most 5 s (seen once in ~40 drains under the reload test's load: a
    # drain held to the master's 10 s deadline).
    timeout = 5
    def do_GET(self):
        if self.path == "/version":
            body = VERSION
        else:
            body = ("%d\n" % os.getpid()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

# What this build serves at /version (read once, at start, like compiled-in code).
VERSION = b""
if os.environ.get("PYWORKER_BODY_FILE"):
    with open(os.environ["PYWORKER_BODY_FILE"], "rb") as f:
        VERSION = f.read()

# As a child of the worker (PYWORKER_CHILD, like the server `npm start` runs), the
# sockets were meant for the parent: LISTEN_PID names it.
if not os.environ.get("PYWORKER_CHILD"):
    assert os.environ.get("LISTEN_PID") == str(os.getpid()), "LISTEN_PID is not mine"
assert os.environ.get("LISTEN_FDS") == "1"
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H, bind_and_activate=False)
server.socket.close()
server.socket = socket.socket(fileno=3)
server.daemon_threads = False
# The signal handler only sets a flag; the main thread, waiting for it, stops the
# server. A handler that started the shutdown thread itself deadlocked once in a while
# under load: the handler runs in the main thread, which may hold threading's
# `_shutdown_locks_lock` (reaping finished request threads), and a new thread takes
# that lock before it reports started, which the handler waited for (the worker then
# hung until the master's drain deadline killed it).
stopping = False
def drain(*_):
    global stopping
    stopping = True
if os.environ.get("PYWORKER_IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
elif os.environ.get("PYWORKER_NO_TERM_HANDLER"):
    pass  # SIGTERM keeps its default action: it ends this server at once
else:
    signal.signal(signal.SIGTERM, drain)
if os.environ.get("PYWORKER_NOTIFY"):
    # Garbage first, as a broken library might send it; then the real READY=1.
    n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    n.sendto(b"\xff\xfe not key=value", os.environ["NOTIFY_SOCKET"])
    n.sendto(b"STATUS=warming up", os.environ["NOTIFY_SOCKET"])
    n.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
print("python worker %d serving" % os.getpid(), file=sys.stderr, flush=True)
serving = threading.Thread(target=server.serve_forever)
serving.start()
while not stopping:
    time.sleep(0.05)  # a signal ends the sleep early
server.shutdown()
serving.join()
server.server_close()
print("python worker %d drained" % os.getpid(), file=sys.stderr, flush=True)
if os.environ.get("PYWORKER_RERAISE"):
    # As many runtimes do: after draining, end by the signal that asked for it.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)

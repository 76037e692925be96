"""A small HTTP server for `baton run`, standard library only.

    baton run --listen 127.0.0.1:8080 -- python3 examples/server.py
    curl 127.0.0.1:8080/pid          # this worker's PID
    kill -HUP <master pid>           # reload: a new worker, then this one drains

It serves on the socket baton passes (systemd's socket activation: descriptor 3,
LISTEN_FDS, LISTEN_PID), says READY=1 on NOTIFY_SOCKET once it serves (so `baton run`
needs no --ready), and on SIGTERM stops accepting, finishes the requests in flight and
exits.
"""
import http.server
import os
import signal
import socket
import sys
import threading


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # A client that sends nothing holds its thread, and the drain, this long at most.
    timeout = 10

    def do_GET(self):
        if self.path == "/":
            body = b"hello from python\n"
        elif self.path == "/pid":
            body = b"%d\n" % os.getpid()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        # One request per connection: at the drain no idle connection is left to
        # close under a client about to send its next request.
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass  # quiet: one line per request is a lot under load


if os.environ.get("LISTEN_PID") != str(os.getpid()) or not os.environ.get("LISTEN_FDS"):
    sys.exit("server.py: no socket passed; run it as: baton run --listen 127.0.0.1:8080 -- python3 server.py")

# SIGTERM (and Ctrl-C) only wake the main thread, which then shuts down: a handler runs
# on the main thread between any two bytecodes, even inside a lock the shutdown needs
# (see crates/baton-cli/tests/pyworker.py), so it does nothing itself. Python writes
# each signal to the wakeup pipe; the main thread waits on it below.
wake_r, wake_w = os.pipe()
os.set_blocking(wake_w, False)
signal.set_wakeup_fd(wake_w)
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: None)

server = http.server.ThreadingHTTPServer(("", 0), Handler, bind_and_activate=False)
server.socket.close()  # the socket it made; it serves baton's instead
server.socket = socket.socket(fileno=3)
server.daemon_threads = False  # server_close() waits for the requests in flight
threading.Thread(target=server.serve_forever).start()

notify = os.environ.get("NOTIFY_SOCKET")
if notify:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as n:
        # A leading @ names an abstract socket.
        n.sendto(b"READY=1", "\0" + notify[1:] if notify.startswith("@") else notify)
print("server.py %d serving" % os.getpid(), file=sys.stderr, flush=True)

os.read(wake_r, 1)  # until a signal comes
server.shutdown()  # stops accepting; the socket stays open for the next worker
server.server_close()  # waits for the requests in flight
print("server.py %d drained" % os.getpid(), file=sys.stderr, flush=True)

import http.server, os, signal, socket, sys, threading

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = ("%d\n" % os.getpid()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

assert os.environ.get("LISTEN_PID") == str(os.getpid()), "LISTEN_PID is not mine"
assert os.environ.get("LISTEN_FDS") == "1"
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H, bind_and_activate=False)
server.socket.close()
server.socket = socket.socket(fileno=3)
server.daemon_threads = False
def drain(*_):
    threading.Thread(target=server.shutdown).start()
signal.signal(signal.SIGTERM, drain)
print("python worker %d serving" % os.getpid(), file=sys.stderr, flush=True)
server.serve_forever()
server.server_close()
print("python worker %d drained" % os.getpid(), file=sys.stderr, flush=True)

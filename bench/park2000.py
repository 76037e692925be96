# 2,000 idle keep-alive connections parked, a restart, and how long until the new
# generation has parked them all again (docs/BENCHMARKS.md §12; before the fix: parked
# 0, memory 8.8 -> 31 MB). Needs the release demo: cargo build --release --example hello
#   python3 bench/park2000.py
import os, re, resource, signal, socket, subprocess, sys, tempfile, time
resource.setrlimit(resource.RLIMIT_NOFILE, (8192, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
R = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release")
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
d = tempfile.mkdtemp()
demo = subprocess.Popen([R + "/examples/hello", "--listen", f"127.0.0.1:{port}", "--pidfile", d + "/p",
                         "--park-idle-after", "1s"], stderr=open(d + "/log", "w"))
def stats():
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    b = b""
    while True:
        x = c.recv(65536)
        if not x: break
        b += x
    return dict(re.findall(r"^(\w+) (\S+)$", b.decode().split("\r\n\r\n", 1)[1], re.M))
def rss(pid):
    return int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{pid}/status").read()).group(1))
for _ in range(100):
    try: stats(); break
    except OSError: time.sleep(0.05)
conns = []
for i in range(2000):
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
    c.recv(4096)
    conns.append(c)
def wait_parked(n, limit=60):
    t0 = time.time()
    while time.time() - t0 < limit:
        if int(stats().get("parked", 0)) >= n: return time.time() - t0
        time.sleep(0.1)
    return None
t = wait_parked(2000); time.sleep(2.5)
print("parked before the restart after", round(t, 2), "s; RSS 2.5 s later", rss(demo.pid), "kB")
old = int(open(d + "/p").read())
t0 = time.time()
os.kill(old, signal.SIGHUP)
while True:
    try:
        if int(open(d + "/p").read()) != old: break
    except ValueError: pass
    time.sleep(0.05)
new = int(open(d + "/p").read())
while os.path.exists(f"/proc/{old}") and open(f"/proc/{old}/stat").read().split()[2] != "Z":
    time.sleep(0.05)
moved = time.time() - t0
again = wait_parked(2000)
time.sleep(2.5)
print(f"old generation gone {moved:.2f} s after SIGHUP (2 s probation); all 2000 parked again {again:.2f} s later; new generation's RSS 2.5 s later {rss(new)} kB")
ok = 0
for c in conns:
    c.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
    if str(new).encode() in c.recv(4096): ok += 1
print("answered by the new generation on the same connection:", ok, "of 2000")
os.kill(new, signal.SIGTERM)

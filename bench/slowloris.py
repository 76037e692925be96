#!/usr/bin/env python3
"""Slow clients ("slowloris"): N connections that each send a request's headers one
byte every INTERVAL seconds, never finishing. Prints, as JSON, how long each connection
lived until the server closed it (or that it outlived DURATION).

    python3 bench/slowloris.py HOST:PORT N INTERVAL DURATION
"""

import json
import selectors
import socket
import sys
import time

host, port = sys.argv[1].rsplit(":", 1)
n, interval, duration = int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
head = b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: " + b"a" * 4096

sel = selectors.DefaultSelector()
opened, lived, failed_to_connect = {}, [], 0
t0 = time.monotonic()
for i in range(n):
    s = socket.socket()
    try:
        s.connect((host, int(port)))
    except OSError:
        failed_to_connect += 1
        s.close()
        continue
    s.setblocking(False)
    opened[s] = (time.monotonic(), 0)
    sel.register(s, selectors.EVENT_READ)
next_send = time.monotonic()
while opened and time.monotonic() - t0 < duration:
    now = time.monotonic()
    if now >= next_send:
        for s, (start, pos) in list(opened.items()):
            try:
                s.send(head[pos:pos + 1])
                opened[s] = (start, pos + 1)
            except OSError:
                pass  # seen as closed by the read below
        next_send = now + interval
    for key, _ in sel.select(timeout=max(0.0, min(0.2, next_send - time.monotonic()))):
        s = key.fileobj
        try:
            data = s.recv(4096)
        except OSError:
            data = b""
        if not data:  # closed by the server (possibly after a 408)
            start, _ = opened.pop(s)
            lived.append(time.monotonic() - start)
            sel.unregister(s)
            s.close()
        else:
            # A response (408): keep reading until the close.
            pass
survivors = len(opened)
for s in list(opened):
    s.close()
lived.sort()
pick = lambda q: round(lived[min(len(lived) - 1, int(q * len(lived)))], 2) if lived else None
print(json.dumps({
    "connections": n, "connect_failed": failed_to_connect, "closed_by_server": len(lived),
    "still_open_at_end": survivors, "lived_s": {"min": pick(0), "p50": pick(0.5), "max": pick(1.0)},
}))

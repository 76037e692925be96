#!/usr/bin/env python3
"""The set-up cost of the first request after a park: N keep-alive connections to a
server on 127.0.0.1:PORT, one request each; then three rounds of: 8 s idle (the demo
parks a connection idle for 5 s), one request on each connection, timed (the first
after the park), and at once another on each (not parked). Prints the medians (us,
wall clock, this Python client included). Run it against `hello --listen ...` and, as
the control, `hello --listen ... --no-park`.

Usage: python3 bench/unpark.py PORT N
"""
import socket, time, sys, statistics, re
port=int(sys.argv[1]); n=int(sys.argv[2])
def req(s):
    s.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
    data=b""
    while b"\r\n\r\n" not in data:
        data+=s.recv(4096)
    head,_,body=data.partition(b"\r\n\r\n")
    L=int(re.search(rb"(?i)content-length: *(\d+)",head).group(1))
    while len(body)<L: body+=s.recv(4096)
socks=[socket.create_connection(("127.0.0.1",port)) for _ in range(n)]
for s in socks: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1); req(s)
def rnd():
    ts=[]
    for s in socks:
        t=time.perf_counter(); req(s); ts.append((time.perf_counter()-t)*1e6)
    return ts
for r in range(3):  # noqa: the rounds
    time.sleep(8)
    a=rnd()   # parked: the first request after the park
    b=rnd()   # not parked: at once after
    print(f"round {r}: after park median {statistics.median(a):.0f} us p90 {sorted(a)[int(.9*n)]:.0f}; unparked median {statistics.median(b):.0f} us p90 {sorted(b)[int(.9*n)]:.0f}")

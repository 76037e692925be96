#!/usr/bin/env python3
"""Open N keep-alive connections to 127.0.0.1:PORT, send one GET on each and read its
response, then hold them all idle until the server closes them. Prints
`holding N` once every connection is idle, then, when all are closed:
`closed N: clean C, reset R, other O` (clean = FIN, i.e. a read of 0 bytes).

Usage: python3 bench/hold.py PORT N
"""
import asyncio
import sys

BATCH = 500  # connections opened at once: stays well inside the accept backlog


async def one(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    return reader, writer


async def wait_closed(reader):
    try:
        data = await reader.read(1)
        return "clean" if data == b"" else "other"
    except ConnectionResetError:
        return "reset"
    except OSError:
        return "other"


async def main(port, n):
    conns = []
    for start in range(0, n, BATCH):
        conns += await asyncio.gather(*(one(port) for _ in range(start, min(n, start + BATCH))))
    print(f"holding {len(conns)}", flush=True)
    outcomes = await asyncio.gather(*(wait_closed(r) for r, _ in conns))
    counts = {k: outcomes.count(k) for k in ("clean", "reset", "other")}
    print(f"closed {len(outcomes)}: clean {counts['clean']}, reset {counts['reset']}, other {counts['other']}",
          flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))

#!/usr/bin/env python3
"""Throughput of baton's serving path against plain hyper-util: the same axum handler,
the same machine, the same run, rounds interleaved (plain, baton, baton, plain, ...).

Reports per client mode: median req/s of each side and the ratio of the medians, the
per-round (paired) ratios, p99 latency, and the server's CPU time per request
(utime+stime from /proc/PID/stat over the run / requests served), which is steadier
than req/s on a shared 2-core machine. Then checks that the load generator is not the
bottleneck: baton-bench against wrk on the same server, with each one's CPU use.

Usage (from the repository root, after `bash bench/throughput.sh` built everything):
    python3 bench/throughput.py RESULTS_DIR
Environment: BENCH_ROUNDS (5), BENCH_SECONDS (10), BENCH_CONCURRENCY (50).
"""
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER = os.path.join(ROOT, "target/release/bench-server")
BENCH = os.path.join(ROOT, "target/release/baton-bench")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
CONC = int(os.environ.get("BENCH_CONCURRENCY", "50"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing answers on port {port} after {timeout}s")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Server:
    def __init__(self, side):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [SERVER, side, "--listen", f"127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=35)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def parse_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v


def wrk(port, mode):
    cmd = ["wrk", "-t2", f"-c{CONC}", f"-d{SECONDS}s", "--latency"]
    if mode == "new-conn":
        cmd += ["-H", "Connection: close"]
    cpu0 = children_cpu()
    out = subprocess.run(cmd + [f"http://127.0.0.1:{port}/"], capture_output=True,
                         text=True, check=True).stdout
    cpu = children_cpu() - cpu0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    p99 = parse_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "requests": total, "p99_ms": p99, "client_cpu_cores": cpu / SECONDS,
            "errors": (errors.group(1) if errors else "") + (f" non-2xx {non2xx.group(1)}" if non2xx else "")}


def bench(port, mode):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run(
            [BENCH, f"http://127.0.0.1:{port}/", "--mode", mode, "-c", str(CONC),
             "-d", f"{SECONDS}s", "--quiet", "--json", f.name],
            capture_output=True, text=True, check=True)
        report = json.load(open(f.name))
    return {"rps": report["rps"], "requests": report["requests"],
            "p99_ms": report["latency_ms"]["all"]["p99"],
            "client_cpu_cores": report["client_cpu_cores"], "failed": report["failed"]}


def main():
    results_dir = sys.argv[1] if len(sys.argv) > 1 else "bench/results"
    os.makedirs(results_dir, exist_ok=True)
    runs = []
    for mode in ["keep-alive", "new-conn"]:
        for r in range(ROUNDS):
            order = ["plain", "baton"] if r % 2 == 0 else ["baton", "plain"]
            for side in order:
                with Server(side) as s:
                    cpu0 = cpu_seconds(s.proc.pid)
                    w = wrk(s.port, mode)
                    w["server_cpu_us_per_request"] = (cpu_seconds(s.proc.pid) - cpu0) * 1e6 / w["requests"]
                w.update(mode=mode, round=r, side=side)
                runs.append(w)
                print(f"{mode:10} round {r} {side:5}: {w['rps']:9.0f} req/s  p99 {w['p99_ms']:.2f} ms  "
                      f"server {w['server_cpu_us_per_request']:.2f} µs/req  {w['errors']}", flush=True)

    lines = ["| client mode | plain hyper-util req/s (median) | baton req/s (median) | ratio of medians "
             "| paired ratios (min–max) | p99 plain / baton, ms | server CPU µs/req plain / baton | CPU ratio |",
             "|---|---|---|---|---|---|---|---|"]
    summary = {}
    for mode in ["keep-alive", "new-conn"]:
        side = lambda s, k: [x[k] for x in runs if x["mode"] == mode and x["side"] == s]
        plain, baton = statistics.median(side("plain", "rps")), statistics.median(side("baton", "rps"))
        paired = [b / p for p, b in zip(side("plain", "rps"), side("baton", "rps"))]
        cpu_p = statistics.median(side("plain", "server_cpu_us_per_request"))
        cpu_b = statistics.median(side("baton", "server_cpu_us_per_request"))
        summary[mode] = {"plain_rps": plain, "baton_rps": baton, "ratio": baton / plain,
                         "paired": paired, "cpu_plain": cpu_p, "cpu_baton": cpu_b}
        lines.append(
            f"| {mode} | {plain:.0f} | {baton:.0f} | **{baton / plain:.3f}** | {min(paired):.3f}–{max(paired):.3f} "
            f"| {statistics.median(side('plain', 'p99_ms')):.2f} / {statistics.median(side('baton', 'p99_ms')):.2f} "
            f"| {cpu_p:.2f} / {cpu_b:.2f} | {cpu_p / cpu_b:.3f} |")

    # Is the load generator the bottleneck? Same server (baton), wrk and baton-bench alternately.
    gen = ["", "| client mode | wrk req/s | wrk CPU (cores) | baton-bench req/s | baton-bench CPU (cores) | baton-bench / wrk |",
           "|---|---|---|---|---|---|"]
    for mode in ["keep-alive", "new-conn"]:
        w_runs, b_runs = [], []
        for r in range(2):
            with Server("baton") as s:
                w_runs.append(wrk(s.port, mode))
            with Server("baton") as s:
                b = bench(s.port, mode)
                b_runs.append(b)
            print(f"generator {mode}: wrk {w_runs[-1]['rps']:.0f} req/s ({w_runs[-1]['client_cpu_cores']:.2f} cores), "
                  f"baton-bench {b['rps']:.0f} req/s ({b['client_cpu_cores']:.2f} cores, {b['failed']} failed)", flush=True)
        wr = statistics.median([x["rps"] for x in w_runs])
        br = statistics.median([x["rps"] for x in b_runs])
        gen.append(f"| {mode} | {wr:.0f} | {statistics.median([x['client_cpu_cores'] for x in w_runs]):.2f} "
                   f"| {br:.0f} | {statistics.median([x['client_cpu_cores'] for x in b_runs]):.2f} | {br / wr:.3f} |")

    machine = f"{os.cpu_count()} CPUs, {os.uname().release}; wrk -t2 -c{CONC} -d{SECONDS}s, {ROUNDS} rounds per side, interleaved"
    md = "\n".join([f"Machine: {machine}", ""] + lines + gen) + "\n"
    with open(os.path.join(results_dir, "throughput.md"), "w") as f:
        f.write(md)
    with open(os.path.join(results_dir, "throughput.json"), "w") as f:
        json.dump({"runs": runs, "summary": summary}, f, indent=2)
    print()
    print(md)


if __name__ == "__main__":
    main()

"""lapse stress against Locust: request rate per generator core, and the latencies each reports.

Both generators load the same loopback HTTP endpoint, started here: a minimal
uvloop server answering ``200 ok`` (it sustains several times what either
generator sends from one core). On a machine with two or more CPUs the server
is pinned to CPU 0 and each generator, with every process it starts, to CPU 1:
the same one-core budget for both. Each figure is the median of interleaved
rounds (lapse, Locust, lapse, ...), so a noisy neighbour hurts both alike.

1. **Maximum rate**: closed loop, the same number of users, no think time,
   the same duration: lapse ``--users U --workers 1`` against Locust
   ``FastHttpUser`` headless ``-u U``. Rate is what each tool reports
   (responses per second over its run), CPU the generator's user+system time.
2. **Latency at a moderate fixed rate**: lapse ``--rate R`` (open loop) against
   Locust with ``constant_throughput`` users adding up to ``R``: p50 and p99 as
   each reports them (Locust rounds to whole milliseconds).

Usage::

    .venv/bin/python benchmarks/stress.py                # 3 rounds of 10 s, about 3 minutes
    .venv/bin/python benchmarks/stress.py --quick        # 1 round of 5 s
    .venv/bin/python benchmarks/stress.py --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


# -- the endpoint ---------------------------------------------------------------------


class _Answer(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.pending = b""

    def data_received(self, data):
        data = self.pending + data
        count = data.count(b"\r\n\r\n")  # GET requests without bodies
        if count:
            self.transport.write(RESPONSE * count)
            data = data[data.rfind(b"\r\n\r\n") + 4:]
        self.pending = data


def serve(port: int) -> None:
    """Run the endpoint (``python benchmarks/stress.py --serve PORT``)."""
    import uvloop

    async def main():
        loop = asyncio.get_running_loop()
        await loop.create_server(_Answer, "127.0.0.1", port, backlog=4096)
        print("ready", flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- running the generators -------------------------------------------------------------


def _pin(cpu: int | None):
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def run_measured(command: list[str], cpu: int | None, env: dict[str, str] | None = None,
                 timeout: float = 300) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run a command; returns its result and the CPU seconds it and its children used."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True,
                                   preexec_fn=_pin(cpu), env=env)  # noqa: PLW1509
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                process.kill()
            time.sleep(0.05)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(command, process.returncode, out.read(), err.read())
    return result, usage.ru_utime + usage.ru_stime


LOCUSTFILE = """
from locust import FastHttpUser, task, constant_throughput

class User(FastHttpUser):
    {wait}

    @task
    def get(self):
        self.client.get("/")
"""


def lapse_closed(url: str, users: int, seconds: int, cpu: int | None) -> dict:
    with tempfile.TemporaryDirectory() as store:
        result, cpu_s = run_measured(
            [sys.executable, "-m", "lapse", "stress", url, "--users", str(users), "--workers",
             "1", "--duration", f"{seconds}s", "--format", "json", "--dir", store], cpu)
    if result.returncode != 0:
        raise RuntimeError(f"lapse stress failed: {result.stderr[-2000:]}")
    doc = json.loads(result.stdout)
    lat = doc["latency"]["uncorrected"]
    return {"rate": doc["throughput"], "p50_ms": lat["p50"] * 1e3, "p99_ms": lat["p99"] * 1e3,
            "errors": doc["requests"]["errors"], "cpu_s": cpu_s,
            "requests": doc["requests"]["total"]}


def lapse_open(url: str, rate: int, seconds: int, cpu: int | None) -> dict:
    with tempfile.TemporaryDirectory() as store:
        result, cpu_s = run_measured(
            [sys.executable, "-m", "lapse", "stress", url, "--rate", str(rate), "--workers", "1",
             "--duration", f"{seconds}s", "--format", "json", "--dir", store], cpu)
    if result.returncode != 0:
        raise RuntimeError(f"lapse stress failed: {result.stderr[-2000:]}")
    doc = json.loads(result.stdout)
    corrected, uncorrected = doc["latency"]["corrected"], doc["latency"]["uncorrected"]
    return {"rate": doc["throughput"], "p50_ms": corrected["p50"] * 1e3,
            "p99_ms": corrected["p99"] * 1e3, "uncorrected_p50_ms": uncorrected["p50"] * 1e3,
            "uncorrected_p99_ms": uncorrected["p99"] * 1e3, "cpu_s": cpu_s}


def locust(url: str, users: int, seconds: int, cpu: int | None, rate: int | None = None) -> dict:
    wait = ("wait_time = constant_throughput(%r)" % (rate / users) if rate
            else "pass")
    with tempfile.TemporaryDirectory() as folder:
        locustfile = Path(folder) / "locustfile.py"
        locustfile.write_text(textwrap.dedent(LOCUSTFILE.format(wait=wait)))
        prefix = str(Path(folder) / "stats")
        locust_bin = str(Path(sys.executable).with_name("locust"))
        result, cpu_s = run_measured(
            [locust_bin, "-f", str(locustfile), "--headless", "-u", str(users), "-r",
             str(max(users, 100)), "-t", f"{seconds}s", "--host", url.rstrip("/"), "--csv", prefix,
             "--only-summary", "--loglevel", "WARNING"], cpu)
        if result.returncode != 0:
            raise RuntimeError(f"locust failed: {result.stderr[-2000:]}")
        with Path(f"{prefix}_stats.csv").open() as handle:
            rows = {row["Name"]: row for row in csv.DictReader(handle)}
    row = rows["Aggregated"]
    return {"rate": float(row["Requests/s"]), "p50_ms": float(row["50%"]),
            "p99_ms": float(row["99%"]), "errors": int(row["Failure Count"]), "cpu_s": cpu_s,
            "requests": int(row["Request Count"])}


def median_of(results: list[dict]) -> dict:
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 5 s")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3)")
    parser.add_argument("--seconds", type=int, help="seconds per run (default 10)")
    parser.add_argument("--users", type=int, default=32, help="users of the closed loop")
    parser.add_argument("--rate", type=int, default=1000, help="fixed rate for latencies")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    rounds = args.rounds or (1 if args.quick else 3)
    seconds = args.seconds or (5 if args.quick else 10)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    server_cpu, generator_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)],
                              stdout=subprocess.PIPE, text=True, preexec_fn=_pin(server_cpu))  # noqa: PLW1509
    try:
        assert server.stdout is not None
        server.stdout.readline()
        url = f"http://127.0.0.1:{port}/"
        closed: dict[str, list[dict]] = {"lapse": [], "locust": []}
        fixed: dict[str, list[dict]] = {"lapse": [], "locust": []}
        for index in range(rounds):
            print(f"round {index + 1}/{rounds}", file=sys.stderr)
            closed["lapse"].append(lapse_closed(url, args.users, seconds, generator_cpu))
            closed["locust"].append(locust(url, args.users, seconds, generator_cpu))
            fixed["lapse"].append(lapse_open(url, args.rate, seconds, generator_cpu))
            fixed["locust"].append(locust(url, args.users, seconds, generator_cpu, args.rate))
    finally:
        server.terminate()
        server.wait(5)
    best = {tool: median_of(runs) for tool, runs in closed.items()}
    at_rate = {tool: median_of(runs) for tool, runs in fixed.items()}
    ratio = best["lapse"]["rate"] / best["locust"]["rate"]
    print(f"\n### Maximum rate, one generator core, {args.users} users, {seconds} s "
          f"(median of {rounds})\n")
    print("| generator | req/s | requests per CPU-second | p50 ms | p99 ms | CPU s | errors |")
    print("|---|---|---|---|---|---|---|")
    for tool in ("lapse", "locust"):
        r = best[tool]
        name = "lapse stress (1 worker)" if tool == "lapse" else "Locust FastHttpUser"
        print(f"| {name} | {r['rate']:,.0f} | {r['requests'] / r['cpu_s']:,.0f} | "
              f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['cpu_s']:.1f} | {r['errors']:.0f} |")
    print(f"\nlapse / Locust: **{ratio:.2f}x** the request rate per generator core "
          f"(CPU s: the generator's processes, start-up included, over a {seconds} s run; "
          "below the run's length, the generator was not the bottleneck).\n")
    print(f"### Latency at {args.rate} req/s (median of {rounds})\n")
    print("| generator | achieved req/s | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    lapse_fixed = at_rate["lapse"]
    print(f"| lapse stress, corrected | {lapse_fixed['rate']:,.0f} | "
          f"{lapse_fixed['p50_ms']:.3f} | {lapse_fixed['p99_ms']:.3f} |")
    print(f"| lapse stress, uncorrected | {lapse_fixed['rate']:,.0f} | "
          f"{lapse_fixed['uncorrected_p50_ms']:.3f} | {lapse_fixed['uncorrected_p99_ms']:.3f} |")
    print(f"| Locust FastHttpUser | {at_rate['locust']['rate']:,.0f} | "
          f"{at_rate['locust']['p50_ms']:.0f} | {at_rate['locust']['p99_ms']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"closed": closed, "fixed_rate": fixed, "ratio": ratio, "users": args.users,
             "seconds": seconds, "rate": args.rate, "pinned": generator_cpu is not None},
            indent=2))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Where the watchlist's time goes, thread by thread, beside the raw client.

    python3 tests/bench/thread_cpu.py USERS ROUNDS

Preloads USERS users as the benchmark does (`Bench.preload`), then, ROUNDS
times, runs the watchlist (one stream thread, 100 ms commits; at-least-once,
or exactly-once with GUARANTEE=exactly-once) and the raw program with the
same traffic (`bench-raw-watchlist`), each until its output is complete.
Just before each is stopped it reads, for every thread of the process
(`/proc/PID/task/TID`), the CPU time (`stat`) and the time spent runnable
but waiting for a core (`schedstat`), summed over threads of one name; and
the broker's CPU over the run. Prints each round, then per program the
min–max of every figure over the rounds.

A thread whose CPU and run-queue wait add up to about the run's time was
never waiting for anything but a core: on a machine the broker shares, the
run is then bound by the CPU of everything on it, not by waits. The
broker must be running (`tests/broker/kafka.sh start`); programs come
from `target/release` (`cargo build --release -p apps -p integration-tests
--bins`).
"""
import collections
import os
import shutil
import subprocess
import sys
import time
import types
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # noqa: E402

#: Figures that are not threads: the run's seconds and the broker's CPU.
SECONDS, BROKER = "(seconds to the last output)", "(broker CPU)"


def threads(pid):
    """CPU and run-queue wait seconds of `pid`'s threads, summed by name."""
    out = collections.Counter()
    for tid in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{tid}"
        try:
            with open(f"{base}/comm") as f:
                name = f.read().strip()
            with open(f"{base}/schedstat") as f:
                waited_ns = int(f.read().split()[1])
            out[f"{name} CPU"] += R.stat_cpu(f"{base}/stat")
            out[f"{name} run-queue wait"] += waited_ns / 1e9
        except (OSError, IndexError, ValueError):
            pass  # the thread ended meanwhile
    return out


def command(b, kind, app):
    """The program `kind` ("ours" or "raw") for one run named `app`, and its output topic."""
    if kind == "ours":
        out = f"{app}-out"
        R.topic(out, 4)
        guarantee = os.environ.get("GUARANTEE", "at-least-once")
        return [R.BIN / "watchlist", "--team", "team-1", "--application-id", app,
                "--new-users-topic", b.input, "--watchlist-topic", out, "--private-changelog",
                "--bootstrap-servers", b.bootstrap, "--state-dir", b.work / app,
                "--guarantee", guarantee, "--commit-interval-ms", 100, "--threads", 1], out
    topics = [f"{app}-{t}" for t in ("repartition", "changelog", "out")]
    for t in topics:
        R.topic(t, 4)
    return [R.BIN / "bench-raw-watchlist", b.bootstrap, b.input, *topics, 1], topics[2]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    users, rounds = int(sys.argv[1]), int(sys.argv[2])
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    b = R.Bench(types.SimpleNamespace(bootstrap=bootstrap, users=users, skip_kstreams=True))
    found = subprocess.run(["pgrep", "-f", "kafka.Kafka"], capture_output=True, text=True).stdout.split()
    if not found:
        sys.exit("no broker process found: start it with tests/broker/kafka.sh start")
    broker_stat = f"/proc/{found[0]}/stat"
    results = collections.defaultdict(lambda: collections.defaultdict(list))
    try:
        b.preload()
        b.ceiling(1)
        for r in range(rounds):
            for kind in ("ours", "raw"):
                app = f"bench-threads-{uuid.uuid4().hex[:8]}"
                cmd, out = command(b, kind, app)
                start_ms = int(time.time() * 1000)
                broker_before = R.stat_cpu(broker_stat)
                with open(b.work / f"{app}.log", "w") as log:
                    p = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=log)
                    try:
                        counter = R.wait_count(
                            R.start_count(b.bootstrap, out, b.flagged, start_ms, 600), {kind: p})
                        figures = threads(p.pid)
                    finally:
                        R.stop(p)
                figures[BROKER] = R.stat_cpu(broker_stat) - broker_before
                figures[SECONDS] = float(R.kv(counter.stdout, "seconds"))
                for name, v in figures.items():
                    results[kind][name].append(v)
                top = sorted(figures.items(), key=lambda kv: -kv[1])[:8]
                print(f"round {r + 1} {kind}: " + ", ".join(f"{k} {v:.2f}" for k, v in top), flush=True)
    finally:
        # The runs' topics, the ceiling's output and the input (a
        # benchmark running beside this would lose its ceiling topics: run
        # one at a time, as both need the cores anyway).
        R.run([R.KAFKA, "delete-topics", "bench-threads-.*|bench-ceiling-.*"])
        if getattr(b, "input", None):
            R.run([R.KAFKA, "delete-topics", b.input])
        shutil.rmtree(b.work, ignore_errors=True)
    for kind, figures in results.items():
        print(f"{kind} (min–max of {rounds} rounds, seconds)")
        for name, vs in sorted(figures.items(), key=lambda kv: -max(kv[1])):
            if max(vs) >= 0.01:
                print(f"  {name:40} {min(vs):.2f}–{max(vs):.2f}")


if __name__ == "__main__":
    main()

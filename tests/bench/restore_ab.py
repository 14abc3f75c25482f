#!/usr/bin/env python3
"""Restores of one changelog by several builds of `count-app`, in turn.

    python3 tests/bench/restore_ab.py N KEYS ROUNDS COUNT_APP [COUNT_APP ...]

Writes a changelog of N changes over KEYS keys in four partitions the way
the benchmark's restore rows do (`bench-fill`, then `count-app` counting by
key), then, ROUNDS times: reads it with the restore ceiling (`bench-read`)
and restores it into an empty state directory with each `count-app`
binary given, in turn. Prints each restore's seconds (the slowest task's
`restored … seconds=`), CPU and peak RSS, then medians. For comparing two
builds of the restore on the same changelog and broker; the broker must
be running (`tests/broker/kafka.sh start`). KEEP=1 keeps the topics.
"""
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import types
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # noqa: E402

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")


def restore(binary, app, state, log_path, n):
    """One restore by `binary`: seconds, CPU seconds, peak RSS MiB."""
    rin, out = f"{app}-in", f"{app}-out"
    env = dict(os.environ, COUNT_APP_BY_KEY="1")
    p = subprocess.Popen([binary, app, rin, out, str(state), BOOTSTRAP], stdout=open(log_path, "w"),
                         stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 600
    restored = []
    while time.time() < deadline and p.poll() is None:
        restored = re.findall(r"restored read=(\d+) changelog_records=(\d+) seconds=\"?([0-9.]+)\"? full=\w+ "
                              r"task=0_\S* applied=(\d+)", log_path.read_text())
        if len(restored) >= 4:
            break
        time.sleep(0.05)
    rss, cpu = R.proc_usage(p.pid) if p.poll() is None else (float("nan"), float("nan"))
    R.stop(p)
    applied = sum(int(x[3]) for x in restored)
    if len(restored) < 4 or applied != n:
        raise RuntimeError(f"{binary}: the restore did not finish or applied {applied} of {n} (log {log_path})")
    return max(float(x[2]) for x in restored), cpu, rss


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    n, keys, rounds = (int(a) for a in sys.argv[1:4])
    bins = sys.argv[4:]
    b = R.Bench(types.SimpleNamespace(bootstrap=BOOTSTRAP, users=n, skip_kstreams=True))
    app = f"bench-rs-{uuid.uuid4().hex[:8]}"
    rin, cl, out = f"{app}-in", f"{app}-counts-changelog", f"{app}-out"
    R.topic(rin, 4)
    R.topic(cl, 4, "cleanup.policy=compact")
    R.topic(out, 4)
    try:
        R.run([R.BIN / "bench-fill", b.bootstrap, rin, n, keys])
        written = b.work / "written"
        b.run_until("changelog", [R.BIN / "count-app", app, rin, out, written, b.bootstrap], out, n,
                    b.work / "written.log", dict(os.environ, COUNT_APP_BY_KEY="1"), 3600)
        shutil.rmtree(written, ignore_errors=True)
        secs = {x: [] for x in bins + ["ceiling"]}
        cpus = {x: [] for x in bins}
        for r in range(rounds):
            plain = R.run([R.BIN / "bench-read", b.bootstrap, cl])
            secs["ceiling"].append(float(R.kv(plain.stdout, "seconds")))
            print(f"round {r + 1}: ceiling {secs['ceiling'][-1]:.3f} s", flush=True)
            for i, x in enumerate(bins):
                state = b.work / f"state-{r}-{i}"
                s, cpu, rss = restore(x, app, state, b.work / f"restore-{r}-{i}.log", n)
                shutil.rmtree(state, ignore_errors=True)
                secs[x].append(s)
                cpus[x].append(cpu)
                print(f"round {r + 1}: {x} {s:.3f} s, CPU {cpu:.2f} s, peak RSS {rss:.0f} MiB", flush=True)
        ceiling = statistics.median(secs["ceiling"])
        for x, v in secs.items():
            line = f"{x}: median {statistics.median(v):.3f} s (min {min(v):.3f}, max {max(v):.3f})"
            if x in cpus:
                line += f", CPU {statistics.median(cpus[x]):.2f} s, {ceiling / statistics.median(v):.2f} of the ceiling"
            print(line)
    finally:
        if not os.environ.get("KEEP"):
            R.run([R.KAFKA, "delete-topics", f"{app}-.*"])
        shutil.rmtree(b.work, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Which thread held each vCPU while each rule change was on its way.

Reads the console log of tests/scripts/propagation_sched.sh (the bench's TIMELINE lines, its
clock pair, the THREAD map and perf's sched_switch / sched_wakeup records) and prints, for the
fastest half of the changes and for the slowest ten, the vCPU time each thread used inside the
change's window (from the request to the last director's kernel write), how often each thread
was switched in there, how long ksoftirqd waited for a CPU once woken, and the per-CPU
sequence of the three slowest changes. It answers "was the change waiting, or was the machine
busy, and with what?" (docs/BENCHMARKS.md, propagation Round 13).
"""
import collections
import re
import statistics
import sys

SCHED = re.compile(r"SCHED\s+(\d+)\s+\[(\d+)\]\s+([\d.]+): sched:(\w+): (.*)")


def fields(line, last=None):
    """The `key=value` words of a tagged line (after its tag), as a dict."""
    return dict(w.split("=", 1) for w in line.split()[1:last])


def main(path):
    lines = open(path, errors="replace").read().splitlines()
    names = {}
    for l in lines:
        if l.startswith("THREAD "):
            kv = fields(l, 4)
            m = re.search(r"/(d\d+)/", l)
            names[int(kv["tid"])] = (m.group(1) if m else "bench") + "-" + kv["comm"]
    changes, offset = [], None
    for l in lines:
        if l.startswith("TIMELINE change="):
            kv = fields(l)
            if kv["latency_us"] != "missing":
                changes.append((int(kv["change"]), int(kv["sent_us"]) / 1e6, int(kv["latency_us"]) / 1e6))
        elif l.startswith("TIMELINE_CLOCKS "):
            kv = fields(l)
            offset = (int(kv["realtime_us"]) - int(kv["monotonic_us"])) / 1e6
    if offset is None or not changes:
        sys.exit("no TIMELINE_CLOCKS or TIMELINE lines: run the bench with --timeline")

    runs = collections.defaultdict(list)  # cpu -> [(start, end, tid)]
    current = {}
    woken = {}
    softirq_waits = []  # s from wake-up to running
    for l in lines:
        m = SCHED.match(l)
        if not m:
            continue
        cpu, t, event, rest = int(m.group(2)), float(m.group(3)), m.group(4), m.group(5)
        if event == "sched_switch":
            nxt = int(re.search(r"next_pid=(\d+)", rest).group(1))
            comm = re.search(r"next_comm=(.*?) next_pid", rest).group(1)
            if nxt and nxt not in names:
                names[nxt] = "kernel:" + re.sub(r"\d+", "N", comm)
            if cpu in current:
                runs[cpu].append((current[cpu][0], t, current[cpu][1]))
            current[cpu] = (t, nxt)
            if comm.startswith("ksoftirqd") and nxt in woken:
                softirq_waits.append(t - woken.pop(nxt))
        elif event == "sched_wakeup" and "comm=ksoftirqd" in rest:
            woken[int(re.search(r" pid=(\d+)", rest).group(1))] = t
    if not runs:
        sys.exit("no perf sched records")
    start = min(r[0] for rs in runs.values() for r in rs)
    end = max(r[1] for rs in runs.values() for r in rs)
    # Only changes the record covers whole.
    changes = [c for c in changes if c[1] - offset > start and c[1] - offset + c[2] < end]
    if not changes:
        sys.exit("no change falls inside the perf record")

    def name(tid):
        return "idle" if tid == 0 else names.get(tid, "other")

    def in_window(change):
        _, sent, lat = change
        a, b = sent - offset, sent - offset + lat
        for cpu, rs in runs.items():
            for x, y, tid in rs:
                if y >= a and x <= b:
                    yield cpu, max(x, a) - a, min(y, b) - max(x, a), tid, x >= a

    def summary(label, group):
        used, switched = collections.Counter(), collections.Counter()
        for c in group:
            for _, _, dur, tid, started in in_window(c):
                used[name(tid)] += dur
                if started and tid:
                    switched[name(tid)] += 1
        n = len(group)
        print(f"== {label}: {n} changes, mean latency {statistics.mean(c[2] for c in group) * 1e3:.1f} ms")
        print("   thread                    vCPU ms per change   switch-ins per change")
        for k, v in sorted(used.items(), key=lambda x: -x[1]):
            print(f"   {k:26s} {v / n * 1e3:8.2f}            {switched[k] / n:6.1f}")

    order = sorted(changes, key=lambda c: c[2])
    summary("fastest half", order[: len(order) // 2])
    summary("slowest ten", order[-10:])
    if softirq_waits:
        w = sorted(softirq_waits)
        print(f"== ksoftirqd: woken {len(w)} times, waited for a CPU p50 {w[len(w) // 2] * 1e3:.2f} ms, max {w[-1] * 1e3:.2f} ms")
    for c in order[-3:]:
        print(f"== change {c[0]}: {c[2] * 1e3:.1f} ms (offset ms + duration ms, thread)")
        per_cpu = collections.defaultdict(list)
        for cpu, at, dur, tid, _ in in_window(c):
            per_cpu[cpu].append(f"{at * 1e3:.1f}+{dur * 1e3:.2f} {name(tid)}")
        for cpu in sorted(per_cpu):
            print(f"   cpu{cpu}: " + " | ".join(per_cpu[cpu]))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/dev/stdin")

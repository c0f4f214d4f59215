#!/usr/bin/env python3
"""Turns the measurements of scripts/bench/compare.sh into markdown tables.

  report.py RESULTS PATH...

RESULTS holds lines "PATH METRIC VALUE"; PATHs give the rows' order. Metrics: gbps-STREAMS-DIR
(STREAMS 1 or 8, DIR up or down), bytes (summed), rtt-p50, rtt-p99, conns, ttfb-p50,
cpu-before and cpu-after (summed over the path's processes), rss-idle/ROLE, anon-idle/ROLE and rss-peak/ROLE
in KiB; and for PATH "machine", machine-cpu-WHEN, our-cpu-WHEN and time-WHEN (WHEN start or
end: see procstat.py account). A measurement that failed has no line and shows as n/a.
"""
import collections
import datetime
import os
import platform
import sys

NAMES = {
    "direct": "direct loopback (the limit)",
    "sesame": "sesame (connect --listen, plaintext)",
    "sesame-tls": "sesame (connect --listen, TLS)",
    "sesame-tcp": "sesame (public TCP port)",
    "sesame-tcp-tls": "sesame (public TCP port, TLS)",
    "bore": "bore",
    "rathole-tcp": "rathole, tcp",
    "rathole-noise": "rathole, noise",
    "ssh": "`ssh -R`",
}
# (metric, column heading, unit, format)
COLUMNS = [
    ("gbps-1-up", "1 stream up", "Gbit/s", "{:.2f}"),
    ("gbps-1-down", "1 stream down", "Gbit/s", "{:.2f}"),
    ("gbps-8-up", "8 streams up", "Gbit/s", "{:.2f}"),
    ("gbps-8-down", "8 streams down", "Gbit/s", "{:.2f}"),
    ("rtt-p50", "RTT p50", "µs", "{:,.0f}"),
    ("rtt-p99", "RTT p99", "µs", "{:,.0f}"),
    ("conns", "new conn/s", "", "{:,.0f}"),
    ("ttfb-p50", "first byte p50", "µs", "{:,.0f}"),
    ("cpu-per-gib", "CPU", "s/GiB", "{:.2f}"),
]
MIB = 1024


def load(path):
    figures = collections.defaultdict(dict)
    sums = collections.defaultdict(float)
    for line in open(path):
        where, metric, value = line.split()
        if metric in ("bytes", "cpu-before", "cpu-after"):
            sums[where, metric] += float(value)
        else:
            figures[where][metric] = float(value)
    for where in {where for where, _ in sums}:
        moved, before, after = (sums.get((where, m)) for m in ("bytes", "cpu-before", "cpu-after"))
        if moved and before is not None and after is not None:
            figures[where]["cpu-per-gib"] = (after - before) / (moved / 2**30)
    return figures


def cell(value, fmt):
    return "n/a" if value is None else fmt.format(value)


def table(headings, rows):
    lines = ["| " + " | ".join(headings) + " |", "|" + " --- |" * len(headings)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def figures_table(figures, paths):
    rows = [[NAMES[p]] + [cell(figures[p].get(m), fmt) for m, _, _, fmt in COLUMNS] for p in paths]
    return table(["path"] + [f"{heading} {unit}".strip() for _, heading, unit, _ in COLUMNS], rows)


def memory_table(figures, paths):
    rows = []
    for path in paths:
        for metric, idle in figures[path].items():
            if metric.startswith("rss-idle/"):
                role = metric.split("/", 1)[1]
                peak = figures[path].get("rss-peak/" + role)
                anon = figures[path].get("anon-idle/" + role)
                rows.append([NAMES[path], role, f"{idle / MIB:.1f}", cell(anon and anon / MIB, "{:.1f}"),
                             cell(peak and peak / MIB, "{:.1f}")])
    return table(["path", "process", "idle RSS MiB", "of which its own (RssAnon) MiB", "peak RSS MiB (iperf3 runs)"],
                 rows)


def ratio(figures, ours, peer, metric):
    mine, theirs = figures[ours].get(metric), figures[peer].get(metric)
    return mine / theirs if mine is not None and theirs else None


def ratios_table(figures, paths, ours):
    """The figures of Sesame's path OURS divided by every other path's."""
    others = [p for p in paths if p not in (ours, "direct")] + ["direct"]
    rows = [[NAMES[p]] + [cell(ratio(figures, ours, p, m), "{:.2f}") for m, _, _, _ in COLUMNS] for p in others]
    return table([f"{NAMES[ours]} ÷"] + [heading for _, heading, _, _ in COLUMNS], rows)


def targets(figures, ours):
    """Sesame's performance targets, checked against this run for its path OURS."""
    sesame, lines = figures[ours], []

    def best(metric, peers):
        values = [figures[p][metric] for p in peers if metric in figures[p]]
        return max(values) if values else None

    def check(goal, ours, theirs, met, fmt, between=" vs "):
        verdict = "n/a" if None in (ours, theirs) else "met" if met(ours, theirs) else "not met"
        lines.append(f"- {goal} ({cell(ours, fmt)}{between}{cell(theirs, fmt)}): {verdict}")

    for streams in (1, 8):
        for direction in ("up", "down"):
            metric = f"gbps-{streams}-{direction}"
            mine, goal = sesame.get(metric), f"{streams} stream(s) {direction}, Gbit/s, at least"
            if ours.endswith("-tls"):
                check(f"{goal} `ssh -R`'s", mine, figures["ssh"].get(metric), lambda a, b: a >= b, "{:.2f}")
                check(f"{goal} 1.3x rathole noise's", mine, figures["rathole-noise"].get(metric),
                      lambda a, b: a >= 1.3 * b, "{:.2f}")
            else:
                check(f"{goal} the best of bore and rathole", mine,
                      best(metric, ("bore", "rathole-tcp", "rathole-noise")), lambda a, b: a >= b, "{:.2f}")
    check("RTT p50, µs, at most rathole tcp's", sesame.get("rtt-p50"), figures["rathole-tcp"].get("rtt-p50"),
          lambda a, b: a <= b, "{:,.0f}")
    check("RTT p99, µs, at most 1.2x rathole tcp's", sesame.get("rtt-p99"),
          figures["rathole-tcp"].get("rtt-p99"), lambda a, b: a <= 1.2 * b, "{:,.0f}")
    check("new conn/s at least 1.5x the best peer's", sesame.get("conns"),
          best("conns", ("bore", "rathole-tcp", "rathole-noise", "ssh")), lambda a, b: a >= 1.5 * b, "{:,.0f}")
    for role in ("relay", "agent"):
        idle, peak = (sesame.get(f"rss-{when}/{role}") for when in ("idle", "peak"))
        check(f"{role} RSS, MiB, idle at most 8 and peak at most 32", idle and idle / MIB, peak and peak / MIB,
              lambda a, b: a <= 8 and b <= 32, "{:.1f}", " and ")
    return "\n".join(lines)


def machine():
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), "unknown CPU")
    return (f"Machine: {os.cpu_count()} cores, {model}, Linux {platform.release()}; "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")


def other_work(figures):
    """The CPU time that processes other than the benchmark's took during the run."""
    m = figures["machine"]
    took = m["machine-cpu-end"] - m["machine-cpu-start"] - (m["our-cpu-end"] - m["our-cpu-start"])
    available = (m["time-end"] - m["time-start"]) * os.cpu_count()
    return (f"Other work on the machine during the run: {max(0, took):.0f} CPU seconds, "
            f"{max(0, took) / available:.0%} of the {available:.0f} there were.")


def main():
    results, paths = sys.argv[1], sys.argv[2:]
    figures = load(results)
    ours = [p for p in paths if p.startswith("sesame")]
    print(machine(), other_work(figures), "", "Throughput, latency, connections and CPU:", "", figures_table(figures, paths),
          "", "Memory of the tunnel processes:", "", memory_table(figures, paths),
          "", "Sesame's figures divided by each other path's (above 1 is better for throughput and",
          "new conn/s, below 1 is better for the others):", sep="\n")
    for path in ours:
        print("", ratios_table(figures, paths, path), sep="\n")
    for path in ours:
        print("", f"Targets, {NAMES[path]}:", "", targets(figures, path), sep="\n")


if __name__ == "__main__":
    main()

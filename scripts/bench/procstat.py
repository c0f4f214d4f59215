#!/usr/bin/env python3
"""Memory and CPU of the tunnel processes, from /proc, for scripts/bench/compare.sh.

Processes are given as LABEL=PID; every output line is "LABEL VALUE".

  procstat.py rss LABEL=PID...                 resident memory now, in KiB (VmRSS)
  procstat.py anon LABEL=PID...                the part of it that is the process's own, in KiB
                                               (RssAnon: without the pages of its executable
                                               and libraries, which are shared and clean)
  procstat.py cpu LABEL=PID...                 CPU seconds used so far (utime + stime)
  procstat.py peak SECONDS LABEL=PID...        samples VmRSS every 100 ms until SIGTERM (or
                                               SECONDS at most), then prints the largest, in KiB
  procstat.py account PID                      CPU seconds the machine has spent in user and
                                               system time so far, and those of PID and its
                                               descendants (dead ones included): the difference
                                               of two readings is what other work took
"""
import collections
import os
import signal
import sys
import time

TICKS = os.sysconf("SC_CLK_TCK")


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise ValueError(f"no {field} for process {pid}")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()  # the name may hold spaces
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime and stime, fields 14 and 15


def account(root):
    with open("/proc/stat") as stat:
        user, nice, system = (int(t) for t in stat.readline().split()[1:4])
    children, own = collections.defaultdict(list), {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            children[int(fields[1])].append(int(name))
            own[int(name)] = sum(int(t) for t in fields[11:15])  # utime, stime, cutime, cstime
    tree, todo = 0, [root]
    while todo:
        pid = todo.pop()
        tree += own.get(pid, 0)
        todo += children[pid]
    print(f"{(user + nice + system) / TICKS:.2f} {tree / TICKS:.2f}")


def peak(seconds, processes):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    largest = {label: 0 for label, _ in processes}
    deadline = time.monotonic() + seconds
    while not stop and time.monotonic() < deadline:
        for label, pid in processes:
            try:
                largest[label] = max(largest[label], rss_kib(pid))
            except (OSError, ValueError):
                pass  # gone: the report shows what was seen while it lived
        time.sleep(0.1)
    for label, kib in largest.items():
        print(label, kib)


def main():
    command, args = sys.argv[1], sys.argv[2:]
    if command == "account":
        return account(int(args[0]))
    if command == "peak":
        seconds, args = float(args[0]), args[1:]
    processes = [tuple(arg.rsplit("=", 1)) for arg in args]
    if command == "rss":
        for label, pid in processes:
            print(label, rss_kib(pid))
    elif command == "anon":
        for label, pid in processes:
            print(label, rss_kib(pid, "RssAnon"))
    elif command == "cpu":
        for label, pid in processes:
            print(label, f"{cpu_seconds(pid):.2f}")
    elif command == "peak":
        peak(seconds, processes)
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()

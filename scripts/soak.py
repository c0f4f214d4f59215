#!/usr/bin/env python3
"""The driver of scripts/soak.sh (python3 standard library only, asyncio).

  soak.py echo
      Serves TCP echo on 127.0.0.1, port 0: prints `echo listening on 127.0.0.1:PORT`, then
      sends back every byte it reads and closes once the peer has half-closed and all is sent.

  soak.py churn --port P --proc NAME:PID:STDERR_LOG ... [--concurrency N] [--duration S]
      Measures each sesame process (open fds, live tasks, OS threads, RSS), churns connections
      through 127.0.0.1:P for S seconds with N workers, waits for the processes to settle,
      prints a markdown table and exits 1 if a bound is violated (see soak.sh for the bounds).

Tasks come from the processes themselves: on SIGUSR1 each writes one line
`sesame stats: tasks=N workers=M` to its stderr, which soak.sh sends to STDERR_LOG.
"""

import argparse
import asyncio
import collections
import os
import random
import re
import shutil
import signal
import sys
import time

MIB = 1 << 20

# One connection: its payload is a random slice of POOL of a random size in this range.
MIN_PAYLOAD = 1 << 10
MAX_PAYLOAD = 256 << 10
POOL = random.randbytes(4 * MAX_PAYLOAD)
READ_CHUNK = 64 << 10

CONNECTION_TIMEOUT = 60.0  # seconds one connection may take, connect to close
WARMUP_CONNECTIONS = 8
STATS_TIMEOUT = 5.0  # seconds a process has to answer SIGUSR1
IDLE_POLL = 0.5  # seconds between samples while waiting for the processes to settle
IDLE_TIMEOUT = 30.0  # seconds the processes have to settle, before and after the churn
IDLE_STABLE_SAMPLES = 3  # identical samples in a row that count as idle (baseline)
SAMPLE_EVERY = 5.0  # seconds between samples during the churn
MAX_CONNECTIONS_PER_WORKER = 10_000_000  # a bound on each worker's loop besides time
SHOW_FAILURES = 5
TRIM_TIMEOUT = 30.0  # seconds a debugger has to attach, call malloc_trim(0) and detach
# The debuggers that may call malloc_trim(0) in a process, in the order tried: each with its
# arguments ({pid} is the process) and what its output shows once the call returned.
DEBUGGERS = [
    ("gdb", ["-nx", "-batch", "-p", "{pid}", "-ex", "call (int) malloc_trim(0)"], rb"^\$1 = [01]$"),
    ("lldb-16", ["-p", "{pid}", "-b", "-o", "expr (int) malloc_trim(0)"], rb"^\(int\) \$0 = [01]$"),
]

# Bounds, checked after the churn (stated in soak.sh too).
FD_SLACK = 0
TASK_SLACK = 0
THREAD_SLACK = 0
RSS_SLACK_MIB = 16
RSS_SLACK_RATIO = 1.5

STATS_LINE = re.compile(rb"^sesame stats: tasks=(\d+) workers=(\d+)$")

# What is measured of a process at one time; a field is None when it could not be measured
# (tasks: no answer to SIGUSR1; all: the process is gone).
Sample = collections.namedtuple("Sample", "fds tasks threads rss")
GONE = Sample(None, None, None, None)


def log(message):
    print(f"soak: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The echo target.


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    # The peer reads slower than it writes: stop reading until it catches up.
    def pause_writing(self):
        self.transport.pause_reading()

    def resume_writing(self):
        self.transport.resume_reading()

    def eof_received(self):
        # Returning false closes the transport once what is buffered has been written.
        return False


async def echo_main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=4096)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"echo listening on {host}:{port}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


# ---------------------------------------------------------------------------------------------
# Measuring a sesame process.


class Process:
    """One sesame process: its pid and the stderr log its stats lines go to."""

    def __init__(self, name, pid, stderr_log):
        self.name, self.pid, self.stderr_log = name, pid, stderr_log
        self.offset = 0  # how far the log has been read
        self.partial = b""  # an incomplete last line
        self.samples = []

    def alive(self):
        try:
            os.kill(self.pid, 0)
            return True
        except ProcessLookupError:
            return False

    def fds(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def status(self):
        """(threads, VmRSS in MiB) from /proc/PID/status."""
        fields = {}
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                fields[key] = value.split()
        return int(fields["Threads"][0]), int(fields["VmRSS"][0]) / 1024

    def _new_stats(self):
        """Reads what the log gained since last time: the tasks of its newest stats line, or
        None if it gained none."""
        with open(self.stderr_log, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        newest = None
        for line in lines:
            match = STATS_LINE.match(line)
            if match:
                newest = int(match.group(1))
        return newest

    async def tasks(self):
        """Sends SIGUSR1 and returns the tasks of the stats line it answers with, or None if
        no line comes within STATS_TIMEOUT."""
        self._new_stats()  # skip what came before (a late answer to an earlier request)
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + STATS_TIMEOUT
        while time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            tasks = self._new_stats()
            if tasks is not None:
                return tasks
        return None

    async def sample(self):
        try:
            fds = self.fds()
            threads, rss = self.status()
            tasks = await self.tasks()
            sample = Sample(fds, tasks, threads, rss)
        except (FileNotFoundError, ProcessLookupError):
            sample = GONE
        self.samples.append(sample)
        return sample

    async def trim(self):
        """Asks the process's C allocator to give its free memory back to the system (glibc's
        malloc_trim(0), called through a debugger: gdb, else lldb, since gdb cannot call a
        function on some CPUs); returns VmRSS afterwards in MiB, or None (with the reasons
        logged) if that could not be done."""
        for debugger, args, called in DEBUGGERS:
            if not self.alive():
                return None
            path = shutil.which(debugger)
            if path is None:
                log(f"{self.name}: no {debugger}")
                continue
            command = [path, *[arg.format(pid=self.pid) for arg in args]]
            process = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
            try:
                output, _ = await asyncio.wait_for(process.communicate(), TRIM_TIMEOUT)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()
                log(f"{self.name}: {debugger} did not call malloc_trim within {TRIM_TIMEOUT:.0f} s")
                continue
            if re.search(called, output, re.MULTILINE):
                return self.status()[1]
            tail = output.decode(errors="replace").strip().splitlines()[-3:]
            log(f"{self.name}: {debugger} could not call malloc_trim: {' / '.join(tail)}")
        return None


async def sample_all(procs):
    return {p.name: await p.sample() for p in procs}


def describe(samples):
    return ", ".join(
        f"{n} fds={fmt(s.fds)} tasks={fmt(s.tasks)} threads={fmt(s.threads)} rss={fmt(s.rss, mib=True)}MiB"
        for n, s in samples.items()
    )


def counts(samples):
    """The part of a sample that must settle: all but RSS."""
    return {name: (s.fds, s.tasks, s.threads) for name, s in samples.items()}


async def wait_idle(procs):
    """Samples until IDLE_STABLE_SAMPLES samples in a row have the same fds, tasks and threads
    (the baseline), within IDLE_TIMEOUT; returns the last sample, or None on timeout."""
    deadline = time.monotonic() + IDLE_TIMEOUT
    recent = []
    while True:
        samples = await sample_all(procs)
        recent = (recent + [samples])[-IDLE_STABLE_SAMPLES:]
        if (
            len(recent) == IDLE_STABLE_SAMPLES
            and all(None not in s for s in samples.values())
            and all(counts(r) == counts(samples) for r in recent)
        ):
            return samples
        if time.monotonic() >= deadline:
            log(f"the processes did not become idle within {IDLE_TIMEOUT:.0f} s: {describe(samples)}")
            return None
        await asyncio.sleep(IDLE_POLL)


def settled(base, now, what):
    """Whether `now` is back to `base` for the fields in `what` (within the slack)."""
    slack = {"fds": FD_SLACK, "tasks": TASK_SLACK, "threads": THREAD_SLACK}
    return all(
        getattr(now, field) is not None and getattr(now, field) <= getattr(base, field) + slack[field]
        for field in what
    )


async def wait_settled(procs, baseline):
    """Samples every IDLE_POLL until fds, tasks and threads are back to the baseline, for up
    to IDLE_TIMEOUT. Returns the last sample and the seconds it took fds and tasks, and then
    threads too, to come back (None: they did not)."""
    start = time.monotonic()
    deadline = start + IDLE_TIMEOUT
    fds_tasks = None
    while True:
        samples = await sample_all(procs)
        now = time.monotonic() - start
        if fds_tasks is None and all(settled(baseline[n], s, ("fds", "tasks")) for n, s in samples.items()):
            fds_tasks = now
        if fds_tasks is not None and all(settled(baseline[n], s, ("threads",)) for n, s in samples.items()):
            return samples, fds_tasks, now
        if time.monotonic() >= deadline or not all(p.alive() for p in procs):
            return samples, fds_tasks, None
        await asyncio.sleep(IDLE_POLL)


# ---------------------------------------------------------------------------------------------
# Churning connections.


class Totals:
    def __init__(self):
        self.connections = 0
        self.bytes = 0  # payload bytes echoed (each is sent once and received once)
        self.failures = 0
        self.reasons = collections.Counter()
        self.started = time.monotonic()

    def fail(self, reason):
        self.failures += 1
        self.reasons[reason] += 1
        if self.failures <= SHOW_FAILURES:
            log(f"failure {self.failures}, {time.monotonic() - self.started:.1f} s in: {reason}")


def reason_of(error):
    if isinstance(error, asyncio.TimeoutError):
        return f"timed out after {CONNECTION_TIMEOUT:.0f} s"
    return f"{type(error).__name__}: {error}"


class Mismatch(Exception):
    pass


async def one_connection(port, size):
    """Sends `size` random bytes, half-closes, reads the echo to its end and checks it."""
    start = random.randrange(len(POOL) - size + 1)
    payload = memoryview(POOL)[start : start + size]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:

        async def send():
            writer.write(payload)
            await writer.drain()
            writer.write_eof()

        async def receive():
            echo = bytearray()
            while True:
                chunk = await reader.read(READ_CHUNK)
                if not chunk:
                    return echo
                echo += chunk
                if len(echo) > size:
                    return echo

        _, echo = await asyncio.gather(send(), receive())
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
    if len(echo) != size:
        raise Mismatch(f"sent {size} bytes, the echo had {len(echo)}{' or more' if len(echo) > size else ''}")
    if echo != payload:
        first = next(i for i in range(size) if echo[i] != payload[i])
        raise Mismatch(f"sent {size} bytes, the echo differs from byte {first}")
    return size


async def worker(port, deadline, totals):
    for _ in range(MAX_CONNECTIONS_PER_WORKER):
        if time.monotonic() >= deadline:
            return
        size = random.randint(MIN_PAYLOAD, MAX_PAYLOAD)
        try:
            # Not `totals.bytes += await ...`: that would read `totals.bytes` before awaiting.
            echoed = await asyncio.wait_for(one_connection(port, size), CONNECTION_TIMEOUT)
            totals.bytes += echoed
            totals.connections += 1
        except Exception as error:  # any error is a failure, counted and shown
            totals.fail(reason_of(error))


async def sampler(procs, stop, every):
    started = time.monotonic()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every)
        except asyncio.TimeoutError:
            pass
        if stop.is_set():
            return
        samples = await sample_all(procs)
        log(f"during churn, {time.monotonic() - started:.0f} s in: {describe(samples)}")


# ---------------------------------------------------------------------------------------------
# The report.


def peak(proc, field):
    values = [getattr(s, field) for s in proc.samples if getattr(s, field) is not None]
    return max(values) if values else None


def fmt(value, mib=False):
    if value is None:
        return "?"
    return f"{value:.1f}" if mib else str(value)


def log_summary(proc, limit=5):
    """The lines of the process's stderr other than stats lines, with ports masked, as
    ([(count, line)] most frequent first, total): where the reasons for failures are."""
    lines = collections.Counter()
    with open(proc.stderr_log, "rb") as f:
        for line in f:
            line = line.rstrip(b"\n")
            if line and not STATS_LINE.match(line):
                text = re.sub(r"\b(\d{1,3}(\.\d{1,3}){3}):\d+", r"\1:PORT", line.decode(errors="replace"))
                lines[text.strip()] += 1
    return lines.most_common(limit), sum(lines.values())


def rss_bound(base):
    return max(base + RSS_SLACK_MIB, RSS_SLACK_RATIO * base)


def seconds(value):
    return "never" if value is None else f"{value:.1f} s"


async def churn_main(args):
    procs = []
    for spec in args.proc:
        name, pid, stderr_log = spec.split(":", 2)
        procs.append(Process(name, int(pid), stderr_log))
    for p in procs:
        if not p.alive():
            log(f"{p.name} (pid {p.pid}) is not running")
            return 1

    # Warm-up: a few connections, so that whatever is set up lazily is in the baseline.
    warmup = Totals()
    for size in [MIN_PAYLOAD, MAX_PAYLOAD] * (WARMUP_CONNECTIONS // 2):
        try:
            await asyncio.wait_for(one_connection(args.port, size), CONNECTION_TIMEOUT)
            warmup.connections += 1
        except Exception as error:
            warmup.fail(reason_of(error))
    if warmup.failures:
        log(f"{warmup.failures} of {WARMUP_CONNECTIONS} warm-up connections failed: {dict(warmup.reasons)}")
        return 1

    baseline = await wait_idle(procs)
    if baseline is None:
        return 1
    log(f"baseline: {describe(baseline)}")

    log(f"churning with {args.concurrency} workers for {args.duration:.0f} s")
    totals = Totals()
    stop = asyncio.Event()
    # At least a few samples in a short churn.
    sampling = asyncio.create_task(sampler(procs, stop, min(args.sample_every, args.duration / 4)))
    started = time.monotonic()
    deadline = started + args.duration
    await asyncio.gather(*(worker(args.port, deadline, totals) for _ in range(args.concurrency)))
    elapsed = time.monotonic() - started
    stop.set()
    await sampling
    log(f"churn done: {totals.connections} connections in {elapsed:.1f} s, {totals.failures} failures")

    # Threads settle last: the tokio blocking pool (the agent resolves `localhost` on it for
    # each connection) keeps idle threads for 10 s. Their stacks count in RSS, so RSS is
    # measured once they are gone.
    after, fds_tasks_settled, all_settled = await wait_settled(procs, baseline)
    log(f"fds and tasks back to baseline after {seconds(fds_tasks_settled)}, threads too after {seconds(all_settled)}")

    # glibc keeps the memory the churn freed (its high-water mark) instead of returning it to
    # the system, so RSS after the churn says little about leaks. RSS once malloc_trim(0) has
    # returned the free memory does: a leak is live memory and stays.
    trimmed = {p.name: await p.trim() for p in procs}

    # The table.
    print(f"## Sesame soak: {args.concurrency} workers, {args.duration:.0f} s")
    print()
    print(
        "| process | fds baseline | fds peak | fds after | tasks baseline | tasks peak | tasks after "
        "| threads baseline | threads peak | threads after "
        "| RSS MiB baseline | RSS MiB peak | RSS MiB after | RSS MiB after trim |"
    )
    print("| --- " + "| ---: " * 13 + "|")
    for p in procs:
        b, a = baseline[p.name], after[p.name]
        row = [p.name]
        for field in ("fds", "tasks", "threads"):
            row += [fmt(getattr(b, field)), fmt(peak(p, field)), fmt(getattr(a, field))]
        row += [fmt(b.rss, mib=True), fmt(peak(p, "rss"), mib=True), fmt(a.rss, mib=True), fmt(trimmed[p.name], mib=True)]
        print("| " + " | ".join(row) + " |")
    print()
    print("| churn | value |")
    print("| --- | ---: |")
    print(f"| connections completed | {totals.connections} |")
    print(f"| connections/s | {totals.connections / elapsed:.1f} |")
    print(f"| bytes moved (each way) | {totals.bytes} ({totals.bytes / MIB:.1f} MiB, {totals.bytes / MIB / elapsed:.1f} MiB/s) |")
    print(f"| failures | {totals.failures} |")
    print(f"| fds and tasks back to baseline after | {seconds(fds_tasks_settled)} |")
    print(f"| threads back to baseline after | {seconds(all_settled)} |")
    print()
    for p in procs:
        common, total = log_summary(p)
        if total:
            print(f"{p.name} logged {total} lines (besides stats lines), most frequent:")
            for text, n in common:
                print(f"- {n}x `{text}`")
            print()

    # The bounds.
    violations = []
    if totals.failures:
        violations.append(f"{totals.failures} failed connections: " + "; ".join(f"{n}x {r}" for r, n in totals.reasons.most_common()))
    if totals.connections == 0:
        violations.append("no connection completed")
    for p in procs:
        b, a = baseline[p.name], after[p.name]
        if not p.alive() or a.fds is None:
            violations.append(f"{p.name} exited")
            continue
        if a.tasks is None:
            violations.append(f"{p.name}: no stats line within {STATS_TIMEOUT:.0f} s of SIGUSR1")
        for field in ("fds", "tasks", "threads"):
            if not settled(b, a, (field,)) and getattr(a, field) is not None:
                extra = getattr(a, field) - getattr(b, field)
                violations.append(f"{p.name}: {extra} {field} more than the baseline {getattr(b, field)} after the churn")
        # Without malloc_trim (no debugger could call it), the bound applies to RSS as it is.
        rss, what = (a.rss, "RSS") if trimmed[p.name] is None else (trimmed[p.name], "RSS after malloc_trim")
        if rss > rss_bound(b.rss):
            violations.append(f"{p.name}: {what} {rss:.1f} MiB after the churn, above the bound {rss_bound(b.rss):.1f} MiB")
    print(
        f"Bounds: failures = 0; fds, tasks and threads after <= baseline (+{FD_SLACK}, +{TASK_SLACK}, "
        f"+{THREAD_SLACK}), waited for up to {IDLE_TIMEOUT:.0f} s; RSS after malloc_trim(0) <= "
        f"max(baseline + {RSS_SLACK_MIB} MiB, {RSS_SLACK_RATIO}x baseline) (RSS as it is when "
        f"malloc_trim cannot be called). RSS after, untrimmed, is glibc's high-water mark: "
        f"reported, not bounded."
    )
    print()
    if violations:
        print("**FAILED**:")
        for v in violations:
            print(f"- {v}")
        return 1
    print("**PASSED**")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("echo", help="serve TCP echo on 127.0.0.1, port 0")
    churn = commands.add_parser("churn", help="churn connections and check for leaks")
    churn.add_argument("--port", type=int, required=True, help="the dialer's local port")
    churn.add_argument("--proc", action="append", required=True, metavar="NAME:PID:STDERR_LOG")
    churn.add_argument("--concurrency", type=int, default=1000)
    churn.add_argument("--duration", type=float, default=600)
    churn.add_argument("--sample-every", type=float, default=SAMPLE_EVERY, help="seconds between samples during the churn")
    args = parser.parse_args()
    if args.command == "echo":
        asyncio.run(echo_main())
        return 0
    return asyncio.run(churn_main(args))


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The echo side of scripts/bench/compare.sh: a server and the clients that time it.

  echo.py serve                        echo on 127.0.0.1, a free port; prints "echo listening on PORT"
  echo.py ready PORT [SECONDS]         waits until one 64-byte round trip through PORT succeeds
  echo.py open PORT [SECONDS]          waits until a TCP connection to PORT is accepted
  echo.py rtt PORT [COUNT]             one connection, COUNT 64-byte round trips: p50 and p99 in µs
  echo.py conns PORT SECONDS CLIENTS   new connections per second from CLIENTS threads, each
                                       connection: connect, one round trip, close
  echo.py ttfb PORT SECONDS            p50 in µs of connect to first echoed byte, one
                                       connection at a time (1,000 at most)

Every client socket has a timeout and every loop a bound, so a stuck tunnel fails the call
instead of hanging the benchmark.
"""
import asyncio
import socket
import sys
import threading
import time

MESSAGE = b"x" * 64
TIMEOUT = 10.0  # seconds for any one socket operation


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport  # asyncio sets TCP_NODELAY on accepted sockets

    def data_received(self, data):
        self.transport.write(data)


async def serve():
    server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", 0, backlog=1024)
    print("echo listening on", server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


def connect(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def round_trip(sock):
    """Sends the message and reads it back; returns the time the first byte came back."""
    sock.sendall(MESSAGE)
    got, first = 0, None
    while got < len(MESSAGE):
        chunk = sock.recv(len(MESSAGE) - got)
        if not chunk:
            raise ConnectionError("closed before the echo came back")
        first = first or time.perf_counter_ns()
        got += len(chunk)
    return first


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def ready(port, seconds=30.0, echo=True):
    deadline = time.monotonic() + seconds
    while True:
        try:
            with connect(port) as sock:
                if echo:
                    round_trip(sock)
            return
        except OSError as error:
            if time.monotonic() > deadline:
                sys.exit(f"port {port}: no {'echo' if echo else 'connection'} within {seconds:.0f} s ({error})")
            time.sleep(0.05)


def rtt(port, count=5000, warmup=500):
    with connect(port) as sock:
        for _ in range(warmup):
            round_trip(sock)
        times = []
        for _ in range(count):
            start = time.perf_counter_ns()
            round_trip(sock)
            times.append((time.perf_counter_ns() - start) / 1000)
    print(f"{percentile(times, 50):.0f} {percentile(times, 99):.0f}")


def one_connection(port):
    """Connects, makes one round trip and closes; returns µs from connecting to the first byte back."""
    start = time.perf_counter_ns()
    with connect(port) as sock:
        first = round_trip(sock)
    return (first - start) / 1000


def conns(port, seconds, clients, cap=200_000):
    """Client threads open, use and close connections until the time is up (or the cap)."""
    counts, errors = [0] * clients, []
    deadline = time.monotonic() + seconds

    def client(index):
        while time.monotonic() < deadline and counts[index] < cap:
            try:
                one_connection(port)
            except OSError as error:
                errors.append(error)
                return
            counts[index] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 2 * TIMEOUT)
    elapsed = time.monotonic() - began
    if errors:
        sys.exit(f"port {port}: a connection failed after {sum(counts)} ({errors[0]})")
    print(f"{sum(counts) / elapsed:.0f}")


def ttfb(port, seconds, count=1000, warmup=50):
    """One connection after the other, so that the client queues behind nothing of its own."""
    for _ in range(warmup):
        one_connection(port)
    deadline = time.monotonic() + seconds
    times = []
    while time.monotonic() < deadline and len(times) < count:
        times.append(one_connection(port))
    print(f"{percentile(times, 50):.0f}")


def main():
    command, args = sys.argv[1], sys.argv[2:]
    if command == "serve":
        asyncio.run(serve())
    elif command == "ready":
        ready(int(args[0]), *map(float, args[1:]))
    elif command == "open":
        ready(int(args[0]), *map(float, args[1:]), echo=False)
    elif command == "rtt":
        rtt(int(args[0]), *map(int, args[1:]))
    elif command == "conns":
        conns(int(args[0]), float(args[1]), int(args[2]))
    elif command == "ttfb":
        ttfb(int(args[0]), float(args[1]))
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()

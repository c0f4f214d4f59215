#!/usr/bin/env python3
"""A WebSocket echo server and a client that checks it, on the `websockets` library.

    ws_echo.py server
        Listens on 127.0.0.1 on a free port and prints the port alone on the first stdout
        line. Echoes every text and binary message, except the text message "whoami", which
        it answers with JSON of what the opening request showed it: {"path": ..., "host": ...}
        (the path with its query, and the Host header).
        Runs until killed.

    ws_echo.py client URL [--messages N] [--size BYTES] [--cafile FILE] [--connect HOST:PORT]
        Connects to URL (ws:// or wss://; --cafile trusts a custom CA, --connect opens the TCP
        connection to HOST:PORT instead of URL's host while keeping URL's host for the Host
        header and TLS), sends N binary messages of random bytes and a text message, checks
        each echo byte for byte, asks "whoami", and prints one JSON line
        {"ok": true, "messages": N, "bytes": TOTAL, "whoami": {...}}. Exits 1, with the reason
        on stderr, on any mismatch or error, or when it has not finished within --timeout
        seconds (60).

Runs with websockets 10.4 (Debian 12) and newer releases.
"""

import argparse
import asyncio
import hashlib
import json
import os
import ssl
import sys
import urllib.parse

import websockets

# Both ends take messages of any size and leave them uncompressed, so the bytes on the wire
# are the bytes sent.
OPTIONS = {"max_size": None, "compression": None}


def request_of(ws):
    """The (path, Host header) of the connection's opening request, on either API."""
    request = getattr(ws, "request", None)
    if request is not None and hasattr(request, "path"):
        return request.path, request.headers.get("Host")
    return ws.path, ws.request_headers.get("Host")


async def echo(ws, _path=None):
    async for message in ws:
        if message == "whoami":
            path, host = request_of(ws)
            await ws.send(json.dumps({"path": path, "host": host}))
        else:
            await ws.send(message)


async def serve():
    async with websockets.serve(echo, "127.0.0.1", 0, **OPTIONS) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(port, flush=True)
        await asyncio.Future()


class Failure(Exception):
    pass


async def client(args):
    url = urllib.parse.urlsplit(args.url)
    kwargs = dict(OPTIONS)
    if url.scheme == "wss":
        kwargs["ssl"] = ssl.create_default_context(cafile=args.cafile)
    elif args.cafile:
        raise Failure("--cafile needs a wss:// URL")
    if args.connect:
        host, _, port = args.connect.rpartition(":")
        kwargs["host"] = host.strip("[]")
        kwargs["port"] = int(port)
        if url.scheme == "wss":
            kwargs["server_hostname"] = url.hostname
    total = 0
    async with websockets.connect(args.url, open_timeout=args.timeout, **kwargs) as ws:
        for n in range(args.messages):
            sent = os.urandom(args.size)
            await ws.send(sent)
            back = await ws.recv()
            if not isinstance(back, bytes):
                raise Failure(f"binary message {n} came back as text")
            if back != sent:
                raise Failure(
                    f"binary message {n} came back different: sent {len(sent)} bytes "
                    f"(sha256 {hashlib.sha256(sent).hexdigest()}), got {len(back)} "
                    f"(sha256 {hashlib.sha256(back).hexdigest()})"
                )
            total += len(sent)
        sent = "text message: h\u00e9llo, w\u00f6rld \u2713"
        await ws.send(sent)
        back = await ws.recv()
        if back != sent:
            raise Failure(f"text message came back as {back!r}, not {sent!r}")
        await ws.send("whoami")
        whoami = json.loads(await ws.recv())
    return {"ok": True, "messages": args.messages, "bytes": total, "whoami": whoami}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    sub.add_parser("server")
    c = sub.add_parser("client")
    c.add_argument("url")
    c.add_argument("--messages", type=int, default=10)
    c.add_argument("--size", type=int, default=64 << 10)
    c.add_argument("--cafile")
    c.add_argument("--connect", metavar="HOST:PORT")
    c.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()

    if args.mode == "server":
        try:
            asyncio.run(serve())
        except KeyboardInterrupt:
            pass
        return

    try:
        report = asyncio.run(asyncio.wait_for(client(args), args.timeout))
    except asyncio.TimeoutError:
        print(f"ws_echo client: not done within {args.timeout} s", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # every failure is reported the same way
        print(f"ws_echo client: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()

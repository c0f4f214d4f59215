#!/usr/bin/env python3
"""A client of the test service sesame.test.Echo, on grpcio, with no generated code.

    grpc_echo_client.py --target HOST:PORT [--authority NAME]
                        [--tls-ca FILE [--tls-server-name NAME]]
                        [--messages N] [--size BYTES] [--timeout SECONDS]

Calls /sesame.test.Echo/Say once with random bytes and checks the echo, reading the
"x-authority" response metadata (the authority the server saw); then opens
/sesame.test.Echo/Chat and sends N messages of random bytes, reading each echo before
sending the next and checking it byte for byte, then ends its side and expects the server to
end too. Messages are google.protobuf.BytesValue. Prints one JSON line
{"ok": true, "unary_authority": "...", "chat_messages": N, "bytes": TOTAL} and exits 0; exits
1 with the reason on stderr on any mismatch or error, or when it has not finished within
--timeout seconds (60), which also bounds every call.

--authority sets the HTTP/2 :authority (grpc.default_authority); --tls-ca switches to TLS
(h2 over TLS) trusting that CA, and --tls-server-name checks the certificate for that name
instead of the target's host (grpc.ssl_target_name_override), which gRPC then also takes as
the default authority. Over TLS, gRPC refuses an --authority that the certificate's name does
not match. Runs with grpcio 1.51 and protobuf 3.21 (Debian 12) and newer releases.
"""

import argparse
import asyncio
import hashlib
import json
import os
import sys

import grpc
from google.protobuf import wrappers_pb2

SAY = "/sesame.test.Echo/Say"
CHAT = "/sesame.test.Echo/Chat"
AUTHORITY_KEY = "x-authority"


class Failure(Exception):
    pass


def metadata_values(metadata, key):
    """The values of `key` in metadata from either aio.Metadata or a sequence of pairs."""
    if metadata is None:
        return []
    if hasattr(metadata, "get_all"):
        return list(metadata.get_all(key))
    return [value for k, value in metadata if k == key]


def check_echo(what, sent, back):
    if back != sent:
        raise Failure(
            f"{what} came back different: sent {len(sent)} bytes "
            f"(sha256 {hashlib.sha256(sent).hexdigest()}), got {len(back)} "
            f"(sha256 {hashlib.sha256(back).hexdigest()})"
        )


async def run(args):
    options = [
        ("grpc.enable_http_proxy", 0),
        ("grpc.max_send_message_length", -1),
        ("grpc.max_receive_message_length", -1),
    ]
    if args.authority:
        options.append(("grpc.default_authority", args.authority))
    if args.tls_ca:
        with open(args.tls_ca, "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        if args.tls_server_name:
            options.append(("grpc.ssl_target_name_override", args.tls_server_name))
        channel = grpc.aio.secure_channel(args.target, credentials, options=options)
    elif args.tls_server_name:
        raise Failure("--tls-server-name needs --tls-ca")
    else:
        channel = grpc.aio.insecure_channel(args.target, options=options)

    serialize = wrappers_pb2.BytesValue.SerializeToString
    deserialize = wrappers_pb2.BytesValue.FromString
    async with channel:
        say = channel.unary_unary(
            SAY, request_serializer=serialize, response_deserializer=deserialize
        )
        sent = os.urandom(args.size)
        call = say(wrappers_pb2.BytesValue(value=sent), timeout=args.timeout)
        reply = await call
        check_echo("the unary message", sent, reply.value)
        authorities = metadata_values(await call.initial_metadata(), AUTHORITY_KEY)
        authorities += metadata_values(await call.trailing_metadata(), AUTHORITY_KEY)
        if not authorities:
            raise Failure(f"the unary reply has no {AUTHORITY_KEY} metadata")
        total = len(sent)

        chat = channel.stream_stream(
            CHAT, request_serializer=serialize, response_deserializer=deserialize
        )
        call = chat(timeout=args.timeout)
        for n in range(args.messages):
            sent = os.urandom(args.size)
            await call.write(wrappers_pb2.BytesValue(value=sent))
            reply = await call.read()
            if reply is grpc.aio.EOF:
                raise Failure(f"the chat ended after {n} of {args.messages} messages")
            check_echo(f"chat message {n}", sent, reply.value)
            total += len(sent)
        await call.done_writing()
        end = await call.read()
        if end is not grpc.aio.EOF:
            raise Failure("the chat sent a message nobody asked for")
        code = await call.code()
        if code != grpc.StatusCode.OK:
            raise Failure(f"the chat ended with {code}: {await call.details()}")

    return {
        "ok": True,
        "unary_authority": authorities[0],
        "chat_messages": args.messages,
        "bytes": total,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True, metavar="HOST:PORT")
    parser.add_argument("--authority")
    parser.add_argument("--tls-ca", metavar="FILE")
    parser.add_argument("--tls-server-name", metavar="NAME")
    parser.add_argument("--messages", type=int, default=10)
    parser.add_argument("--size", type=int, default=64 << 10)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    try:
        report = asyncio.run(asyncio.wait_for(run(args), args.timeout))
    except asyncio.TimeoutError:
        print(f"grpc_echo_client: not done within {args.timeout} s", file=sys.stderr)
        sys.exit(1)
    except grpc.RpcError as e:
        print(f"grpc_echo_client: RPC failed: {e.code()}: {e.details()}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # every failure is reported the same way
        print(f"grpc_echo_client: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()

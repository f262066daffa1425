"""A stand-in service process for the suite runner's unit tests: grpc health on --listen,
SERVING at once; SIGUSR1 turns it NOT_SERVING (an engine that died); SIGTERM appends its
name to --record and exits 0; --fail exits 3 at once (a service that cannot start)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


async def serve(args: argparse.Namespace) -> None:
    server = grpc.aio.server()
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    server.add_insecure_port(args.listen)
    await server.start()
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(
        signal.SIGUSR1,
        lambda: loop.create_task(checker.set("", health_pb2.HealthCheckResponse.NOT_SERVING)),
    )
    await stop.wait()
    with open(args.record, "a") as record:  # noqa: ASYNC230 - one line, once, at exit
        record.write(f"{args.name}\n")
    await server.stop(0)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--record", required=True)
    parser.add_argument("--fail", action="store_true")
    args = parser.parse_args()
    if args.fail:
        return 3
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

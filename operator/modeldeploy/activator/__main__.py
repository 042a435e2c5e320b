"""`python -m modeldeploy.activator`: the activator process (see the package docstring)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path

from aiohttp import web

from modeldeploy.activator.admin import make_app
from modeldeploy.activator.targets import Registry


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m modeldeploy.activator", description=__doc__)
    p.add_argument("--admin-port", type=int, default=9090, help="the operator's HTTP API and /metrics")
    p.add_argument("--bind", default="0.0.0.0", help="the address every port listens on")
    p.add_argument("--advertise-address", default=os.environ.get("POD_IP", "127.0.0.1"),
                   help="the address the operator writes into EndpointSlices (default: $POD_IP)")
    p.add_argument("--token-file", default="", help="a file holding the bearer token the HTTP API requires")
    p.add_argument("--port-file", default="", help="write the admin port here once listening (tests, the local cluster)")
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    token = Path(args.token_file).read_text().strip() if args.token_file else ""
    # a stop waits at most 2 s for open calls (the operator's long-poll of the demand among them)
    runner = web.AppRunner(make_app(Registry(args.bind), args.advertise_address, token), access_log=None,
                           shutdown_timeout=2)
    await runner.setup()
    await web.TCPSite(runner, args.bind, args.admin_port).start()
    port = runner.addresses[0][1]
    logging.getLogger("modeldeploy.activator").info("activator: HTTP API on %s:%d", args.bind, port)
    if args.port_file:
        tmp = Path(args.port_file + ".tmp")
        tmp.write_text(str(port))
        tmp.replace(args.port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(parse(argv)))


if __name__ == "__main__":
    main()

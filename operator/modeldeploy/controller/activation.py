"""The first held request of a ModelDeployment at zero wakes its reconcile at once: a task
long-polls the activator's demand (`GET /v1/demand`) and queues every ModelDeployment with held
requests. Its first answer lists those already waiting (an operator restarted while requests are
held picks them up). Without it the periodic look would find them, up to a resync later. When the
activator answers again after it did not (it restarted: its gates and ports are gone), `reconnected`
queues every ModelDeployment, so that their gates are put again and their Services' slices name the
new ports at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp

from modeldeploy.clients import activator

log = logging.getLogger("modeldeploy.controller.activation")
WAIT_SECONDS = 30.0


async def watch(url: str, token: str, enqueue: Callable[[tuple[str, str]], None],
                reconnected: Callable[[], None] = lambda: None, retry: float = 1.0) -> None:
    """Until cancelled."""
    seq = -1
    failing = False
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                seq, waiting = await activator.wait_demand(session, url, token, seq, WAIT_SECONDS)
            except (OSError, ValueError) as exc:
                if not failing:
                    log.warning("the activator at %s does not answer its demand: %s", url, exc)
                failing = True
                seq = -1  # a restarted activator counts from 0 again
                await asyncio.sleep(retry)
                continue
            if failing:
                reconnected()
            failing = False
            for key in waiting:
                enqueue(key)

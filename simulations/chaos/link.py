"""`ProviderLink`: the simulated processes' way to the emulated providers, with tripwires.

Every request a process sends reaches the emulator through here, and:

* Each request is tagged with its process's number (`CLIENT_HEADER`), so the
  emulator's arrival journal says which process called.
* The emulator answers outside the process: tasks it starts while answering
  (LlamaParse's webhook deliveries) belong to LlamaParse, not to the process
  that uploaded, so a crash of that process does not cancel them.
* Each accepted upload's name is noted with the process that got the answer.
* An armed tripwire kills the process whose request it just saw answered,
  before our code reads the answer: right after LlamaParse accepted an
  upload (the remote job exists, no row names it yet), or right after
  LlamaParse said a job is COMPLETED (its result is neither fetched nor
  stored yet). These are windows `state.pipeline.remote`'s crash table
  promises to survive, which a crash between two steps rarely hits.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from dataclasses import replace
from enum import StrEnum
from typing import Any, Final

import orjson

from providers.transport import HttpRequest, HttpResponse
from simulations.emulators import Emulator
from simulations.emulators.journal import CLIENT_HEADER

PROCESS: contextvars.ContextVar[int | None] = contextvars.ContextVar("sim_process", default=None)
"""Which simulated process a task belongs to (None: the world's own, or a provider's)."""

_UPLOAD: Final = "/api/v2/parse/upload"
_JOBS: Final = "/api/v2/parse"


class Tripwire(StrEnum):
    """Where an armed tripwire kills a process (named as the chaos coverage counts it)."""

    UPLOADED = "crash between submit and record"
    """An upload answered 200: the remote job exists, its id is not recorded yet."""
    COMPLETED = "crash between completion and fetch"
    """A status or result answer shows a COMPLETED job: it is not stored yet."""


class ProviderLink:
    """A `Transport` into `emulator` that kills a process at an armed tripwire.

    `kill(number, names)` must cancel every task of process `number`, the
    calling one included, so the answer is never read; `names` are the
    remote jobs the answer was about.
    """

    def __init__(self, emulator: Emulator, kill: Callable[[int, list[str]], None]) -> None:
        self.emulator = emulator
        self._kill = kill
        self.armed: Tripwire | None = None
        self.fired: list[Tripwire] = []
        self.uploads: dict[str, int] = {}
        """Upload name -> the process its accepted answer went to."""

    async def send(self, request: HttpRequest) -> HttpResponse:
        number = PROCESS.get()
        if number is not None:
            request = replace(request, headers={**request.headers, CLIENT_HEADER: str(number)})
        outside = PROCESS.set(None)
        try:
            response = await self.emulator.handle(request)
        finally:
            PROCESS.reset(outside)
        if number is None or response.status != 200:
            return response
        route, _, query = request.url.split("://", 1)[-1].partition("/")[2].partition("?")
        route = "/" + route
        armed = self.armed
        if request.method == "POST" and route == _UPLOAD:
            jobs = _jobs(response)
            self.uploads.update((job["name"], number) for job in jobs)
            caught = jobs if armed is Tripwire.UPLOADED else []
        elif armed is Tripwire.COMPLETED and _looks_at_jobs(request.method, route, query):
            caught = [job for job in _jobs(response) if job["status"] == "COMPLETED"]
        else:
            caught = []
        if armed is not None and caught:
            self.armed = None
            self.fired.append(armed)
            self._kill(number, [job["name"] for job in caught])
            await asyncio.sleep(0)  # the kill cancelled this task too: it ends here
        return response


def _looks_at_jobs(method: str, route: str, query: str) -> bool:
    """A look at recorded jobs: one job's GET, or the job list asked by id (not `find`'s
    search by name)."""
    if method != "GET" or route == f"{_JOBS}/versions":
        return False
    return route.startswith(_JOBS + "/") or (route == _JOBS and "job_ids=" in query)


def _jobs(response: HttpResponse) -> list[dict[str, Any]]:
    """The job objects a v2 answer describes: an upload's, a GET's or a list's."""
    try:
        answer: Any = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(answer, dict):
        return []
    found = answer.get("items", [answer.get("job", answer)])
    if not isinstance(found, list):
        return []
    return [
        job
        for job in found
        if isinstance(job, dict) and isinstance(job.get("name"), str) and "status" in job
    ]


__all__ = ["PROCESS", "ProviderLink", "Tripwire"]

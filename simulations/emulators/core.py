"""`Emulator`: both providers behind one `handle(HttpRequest) -> HttpResponse`.

The core knows no web framework. `server` adapts it to aiohttp and
`inprocess` to `providers.transport.Transport`; either way the same
handlers answer. All timing comes from the running loop (`asyncio.sleep`,
`loop.time()`), so on `resilience.testing.VirtualTimeLoop` an emulated
minute of latency or a 300 s parse passes instantly.

Per request, in this order: route by path prefix (`/v1/` OpenAI, `/api/`
LlamaParse, `/_control/` control); draw this request's faults; sleep the
latency; then answer the outage status inside an outage window, or hang, or
answer the error status, or run the real handler, whose 200 may then be
malformed. Faults that replace the answer come before the handler, so they
have no side effects (no job, no rate-limit charge); a malformed answer
comes after, so the job exists and the tokens are spent, as when a reply is
garbled on the way back. So does a lost answer (a handler raising
`AnswerLost`: LlamaParse v2's `lost_upload_answer_rate`, OpenAI's
`lost_answer_rate`): the job exists or the tokens are billed, and the
request hangs.

Every embeddings request is also noted as an arrival (`Stats.arrived`) once
it is over, answered or not: a hang or a client giving up mid-latency still
reached OpenAI, and a rate check must count it. Every routed request, to
either provider, is also written in the arrival journal (`journal`,
`Emulator.arrivals`): when it came and from whom, and how and when it ended.

Outage windows count from the moment the plan was applied: the loop time of
`set_faults` when called inside a running loop, otherwise (a plan given to
the constructor, say) the emulator's first request, for both providers.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from typing import NoReturn

from providers.transport import HttpRequest, HttpResponse, Transport
from simulations.emulators import control
from simulations.emulators.bills import OpenAIBill
from simulations.emulators.chaos import FaultInjector
from simulations.emulators.faults import FaultPlan
from simulations.emulators.ids import Ids
from simulations.emulators.journal import (
    CLIENT_HEADER,
    UNTAGGED,
    Arrival,
    Journal,
    asked_wait_s,
)
from simulations.emulators.llamaparse_api import LlamaParseApi
from simulations.emulators.llamaparse_v2 import ParseJob
from simulations.emulators.openai_api import OpenAIApi
from simulations.emulators.routing import AnswerLost, Incoming, ProviderApi, Route, json_response
from simulations.emulators.stats import (
    CORRELATION_HEADER,
    NEVER_ANSWERED,
    UNCORRELATED,
    Stats,
    StatsSnapshot,
)
from simulations.emulators.webhook_delivery import WebhookSender

DEFAULT_WEBHOOK_SECRET = "breakwater-emulator-secret"


class Emulator:
    """Emulated OpenAI embeddings and LlamaParse, with a seeded, replaceable fault plan.

    `openai_api_key` / `llamaparse_api_key`: when set, only that Bearer key
    is accepted; when None any non-empty key is. `webhook_transport` carries
    LlamaParse's webhook deliveries (default: real HTTP, made on first use).
    `standard_webhook_secret` signs every signed delivery the Standard
    Webhooks way too, beside LC-Signature (`webhook_delivery`).
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        faults: FaultPlan | None = None,
        webhook_secret: str = DEFAULT_WEBHOOK_SECRET,
        openai_api_key: str | None = None,
        llamaparse_api_key: str | None = None,
        webhook_transport: Transport | None = None,
        standard_webhook_secret: str | None = None,
    ) -> None:
        self.seed = seed
        self._stats = Stats()
        self._journal = Journal()
        ids = Ids(random.Random(f"{seed}:ids"))
        self._webhooks = WebhookSender(
            webhook_secret,
            self._stats,
            webhook_transport,
            standard_secret=standard_webhook_secret,
        )
        self._openai = OpenAIApi(ids, openai_api_key, self._stats)
        self._llamaparse = LlamaParseApi(ids, llamaparse_api_key, self._webhooks, self._stats)
        self._apis: dict[str, ProviderApi] = {"/v1/": self._openai, "/api/": self._llamaparse}
        self._injectors: dict[str, FaultInjector] = {}
        self._hangs: set[asyncio.Future[NoReturn]] = set()
        self._plan = FaultPlan()
        self._anchored = False
        self.set_faults(faults or FaultPlan())

    # -- the Python control API ----------------------------------------------

    @property
    def faults(self) -> FaultPlan:
        return self._plan

    def set_faults(self, plan: FaultPlan) -> None:
        """Put `plan` in force: fresh fault generators, limits full, outage clock restarted."""
        seed = self.seed if plan.seed is None else plan.seed

        def rng(label: str) -> random.Random:
            return random.Random(f"{seed}:{label}")

        self._plan = plan
        self._injectors = {
            "openai": FaultInjector(plan.openai, rng("openai:faults")),
            "llamaparse": FaultInjector(plan.llamaparse, rng("llamaparse:faults")),
        }
        self._openai.configure(plan.openai, rng("openai:order"), rng("openai:lost_answers"))
        self._llamaparse.configure(
            plan.llamaparse, rng("llamaparse:jobs"), rng("llamaparse:lost_answers")
        )
        self._webhooks.configure(plan.llamaparse.webhook, rng("llamaparse:webhooks"))
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:
            self._anchored = False  # not in a loop: the windows start at the first request
            return
        self._anchor(now)

    def _anchor(self, now: float) -> None:
        for injector in self._injectors.values():
            injector.start(now)
        self._anchored = True

    def stats(self) -> StatsSnapshot:
        return self._stats.snapshot()

    def llamaparse_jobs(self) -> tuple[ParseJob, ...]:
        """LlamaParse v2's jobs, oldest first: the ground truth of what was uploaded and
        billed, whatever the client made of the answers. Read them; never change them."""
        return self._llamaparse.v2_jobs()

    def arrivals(self) -> tuple[Arrival, ...]:
        """Every routed request either provider received, oldest first (`journal`)."""
        return self._journal.arrivals()

    def openai_bills(self) -> tuple[OpenAIBill, ...]:
        """OpenAI's bills, in the order it billed: what it charged for and which vectors
        reached the client (`bills`), whatever the client made of the answers."""
        return self._openai.bills.bills()

    def reset(self) -> None:
        """Forget jobs, bills, counts, arrivals, limits and pending webhooks; re-apply the plan."""
        self._stats.clear()
        self._journal.clear()
        self._openai.bills.clear()
        self._llamaparse.clear()
        self._webhooks.cancel_pending()
        self.set_faults(self._plan)

    async def close(self) -> None:
        """End hung requests and pending webhooks, and release webhook connections."""
        for future in list(self._hangs):
            future.cancel()
        await self._webhooks.close()

    # -- serving -------------------------------------------------------------

    async def handle(self, request: HttpRequest) -> HttpResponse:
        loop = asyncio.get_running_loop()
        incoming = Incoming.from_request(request, loop.time())
        if not self._anchored:
            self._anchor(incoming.received_at)
        if incoming.path.startswith(control.PREFIX):
            return control.answer(self, incoming)
        api = next(
            (api for prefix, api in self._apis.items() if incoming.path.startswith(prefix)), None
        )
        if api is None:
            return json_response(404, {"detail": "Not Found"})
        for route in api.routes:
            params = route.match(incoming.path)
            if params is not None and route.method == incoming.method:
                break
        else:
            response = api.not_found(incoming)
            self._stats.answered("unrouted", response.status)
            return response
        correlation_id = incoming.headers.get(CORRELATION_HEADER, UNCORRELATED)
        self._stats.routed(route.label, correlation_id)
        client = incoming.headers.get(CLIENT_HEADER, UNTAGGED)
        arrival = self._journal.arrived(
            incoming.received_at, api.name, route.label, correlation_id, client
        )
        status = NEVER_ANSWERED
        try:
            response = await self._answer(api, route, params, incoming, arrival)
            status = response.status
            arrival.retry_after_s = asked_wait_s(response.headers)
        finally:
            self._journal.ended(arrival, status, loop.time())
            if api is self._openai:  # its one route is /v1/embeddings
                self._stats.arrived(incoming.received_at, status, self._openai.charged(incoming))
        self._stats.answered(route.label, status)
        return response

    async def _answer(
        self,
        api: ProviderApi,
        route: Route,
        params: Mapping[str, str],
        incoming: Incoming,
        arrival: Arrival,
    ) -> HttpResponse:
        """The routed request's answer, faults drawn and applied in the module's order."""
        loop = asyncio.get_running_loop()
        injector = self._injectors[api.name]
        plan = injector.plan
        decision = injector.decide()
        if decision.latency_s > 0:
            self._fault(api.name, "latency", arrival)
            await asyncio.sleep(decision.latency_s)
        if injector.in_outage(loop.time()):
            self._fault(api.name, "outage", arrival)
            response = api.fault_response(plan.outage_status, incoming)
        elif decision.hang:
            self._fault(api.name, "hang", arrival)
            await self._hang()
        elif decision.error:
            self._fault(api.name, "error", arrival)
            response = api.fault_response(plan.error_status, incoming)
        else:
            try:
                response = await route.handler(incoming, params)
            except AnswerLost:
                self._fault(api.name, "lost_answer", arrival)
                await self._hang()
            if decision.malformed is not None and response.status == 200:
                self._fault(api.name, "malformed", arrival)
                response = api.malform(response, decision.malformed)
        return response

    def _fault(self, provider: str, kind: str, arrival: Arrival) -> None:
        self._stats.fault(provider, kind)
        arrival.fault = kind

    async def _hang(self) -> NoReturn:
        """Never answer. Only cancellation ends this: the caller's timeout, or `close`."""
        future: asyncio.Future[NoReturn] = asyncio.get_running_loop().create_future()
        self._hangs.add(future)
        try:
            await future
        finally:
            self._hangs.discard(future)

"""Local emulators of the OpenAI Embeddings and LlamaParse APIs, with seeded fault plans.

One framework-free core (`Emulator.handle(HttpRequest) -> HttpResponse`)
answers both APIs as the real services do: their endpoints, bodies, limits,
error bodies, headers and statuses (see README.md here). It is reached two
ways with the same handlers:

* over real HTTP: `start(emulator)` / `serve(...)` / `breakwater emulate`,
  for the official SDKs and anything else that speaks HTTP;
* in-process: `InProcessTransport(emulator)` is a
  `providers.transport.Transport`, for simulations on virtual time.

A `FaultPlan` (latency, error rates, outage windows, hangs, malformed
answers, rate limits, webhook misbehaviour) is seeded and replaceable at run
time (`Emulator.set_faults`, `POST /_control/faults`).
"""

from simulations.emulators.core import DEFAULT_WEBHOOK_SECRET, Emulator
from simulations.emulators.faults import (
    FaultPlan,
    FaultPlanError,
    LlamaParsePlan,
    OpenAIPlan,
    WebhookPlan,
    load_plan,
    plan_from_json,
    plan_to_json,
)
from simulations.emulators.inprocess import InProcessTransport
from simulations.emulators.server import RunningEmulator, create_app, serve, start
from simulations.emulators.stats import StatsSnapshot
from simulations.emulators.webhook_delivery import SIGNATURE_HEADER, sign

__all__ = [
    "DEFAULT_WEBHOOK_SECRET",
    "SIGNATURE_HEADER",
    "Emulator",
    "FaultPlan",
    "FaultPlanError",
    "InProcessTransport",
    "LlamaParsePlan",
    "OpenAIPlan",
    "RunningEmulator",
    "StatsSnapshot",
    "WebhookPlan",
    "create_app",
    "load_plan",
    "plan_from_json",
    "plan_to_json",
    "serve",
    "sign",
    "start",
]

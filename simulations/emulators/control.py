"""`/_control/*`: inspect and steer a running emulator over HTTP.

* `GET /_control/stats`: the counts (`StatsSnapshot.to_json`).
* `GET /_control/faults`: the plan in force.
* `POST /_control/faults`: replace the plan with the JSON body; 400
  `{"error": {"field", "message"}}` naming the bad field, and the old plan
  stays.
* `POST /_control/reset`: forget jobs, counts and limits; restart the plan.

Control requests are never faulted and never counted.
"""

from __future__ import annotations

from typing import Protocol

from providers.transport import HttpResponse
from simulations.emulators.faults import FaultPlan, FaultPlanError, plan_from_bytes, plan_to_json
from simulations.emulators.routing import Incoming, json_response
from simulations.emulators.stats import StatsSnapshot

PREFIX = "/_control/"


class Controllable(Protocol):
    @property
    def faults(self) -> FaultPlan: ...

    def set_faults(self, plan: FaultPlan) -> None: ...

    def stats(self) -> StatsSnapshot: ...

    def reset(self) -> None: ...


def answer(target: Controllable, incoming: Incoming) -> HttpResponse:
    action = (incoming.method, incoming.path.removeprefix(PREFIX).rstrip("/"))
    if action == ("GET", "stats"):
        return json_response(200, target.stats().to_json())
    if action == ("GET", "faults"):
        return json_response(200, {"faults": plan_to_json(target.faults)})
    if action == ("POST", "faults"):
        try:
            plan = plan_from_bytes(incoming.body)
        except FaultPlanError as error:
            return json_response(400, {"error": {"field": error.field, "message": str(error)}})
        target.set_faults(plan)
        return json_response(200, {"faults": plan_to_json(plan)})
    if action == ("POST", "reset"):
        target.reset()
        return json_response(200, {"reset": True})
    return json_response(404, {"detail": "Not Found"})

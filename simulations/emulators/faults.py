"""The fault plan: what each emulated provider does wrong, and when.

A plan is data, loaded from JSON at start (`breakwater emulate --faults
plan.json`), replaced at run time (`POST /_control/faults`) or passed in
Python (`Emulator.set_faults`). Every random choice it causes comes from
generators seeded by the plan's `seed` (or the emulator's), so the same plan
against the same traffic misbehaves the same way on every run.

JSON schema. Every field is optional; the values shown are the defaults. A
"range" is a number or a `[min, max]` pair (seconds); a rate is a probability
in [0, 1] drawn independently per request.

    {
      "seed": null,                  // int; null means the emulator's --seed
      "openai": {
        "latency_s": [0, 0],         // range: added before every answer
        "error_rate": 0.0,           // answer `error_status` instead of the real reply
        "error_status": 503,         // 400..599
        "outages": [],               // [[start_s, end_s], ...] from when the plan was applied
        "outage_status": 503,        // 400..599, answered to everything inside a window
        "hang_rate": 0.0,            // never answer; only the client's timeout ends the call
        "malformed_rate": 0.0,       // a 200 whose body is broken in one of:
        "malformed_kinds": ["invalid_json", "wrong_shape", "wrong_dims", "missing_item"],
        "rpm": 3000,                 // requests per minute, per model (token bucket)
        "tpm": 1000000,              // tokens per minute, per model (token bucket)
        "quota_exhausted": false,    // every call: 429 insufficient_quota, no Retry-After
        "shuffle_rate": 0.0,         // a 200's `data` items in a seeded random order
        "lost_answer_rate": 0.0      // billed, then the answer never leaves (a hang)
      },
      "llamaparse": {
        "latency_s": [0, 0], "error_rate": 0.0, "error_status": 503,
        "outages": [], "outage_status": 503, "hang_rate": 0.0,
        "malformed_rate": 0.0, "malformed_kinds": ["invalid_json", "wrong_shape"],
        "parse_time_s": 1.0,         // range: how long a job stays PENDING
        "upload_limit": 15,          // uploads accepted per sliding window...
        "upload_window_s": 10.0,     // ...of this many seconds; then 429
        "upload_retry_after": false, // whether that 429 carries Retry-After (v1 only)
        "v2_upload_limit": 50,       // v2 uploads (/api/v2/parse*) per window; its 429
                                     // always carries Retry-After, which the v2 SDK honours
        "page_failure_rate": 0.0,    // each page fails to parse (partial success)
        "lost_upload_answer_rate": 0.0, // v2: the job is created, its answer never sent
        "webhook": {
          "delay_s": 0.0,            // range: from SUCCESS to the first delivery attempt
          "drop_rate": 0.0,          // never delivered
          "duplicate_rate": 0.0,     // delivered twice
          "bad_signature_rate": 0.0, // signed with the wrong secret
          "retry_backoff_s": [1, 2, 4], // one retry per entry after a non-2xx or no answer
          "timeout_s": 10.0          // per delivery attempt
        }
      }
    }

Malformed kinds: `invalid_json` truncates the body mid-document;
`wrong_shape` wraps the real document as `{"result": ...}`; `wrong_dims`
drops the last value of every embedding; `missing_item` drops the last entry
of `data`. Only 200 answers are malformed.

`lost_upload_answer_rate` (LlamaParse v2's two create routes) strikes after
the job is made: it exists, shows in the job list and completes, but the
answer that names it never leaves, as when a connection drops on the way
back; only the client's timeout ends the request. It is the crash between
an upload's acceptance and the caller recording it, which only a caller
that finds its job again by name (v2's job list) can recover without a
second upload. It is drawn from its own generator, once per created job.

`lost_answer_rate` (OpenAI) is its counterpart for embeddings: the request
is admitted and billed (its tokens charged to the limits, its bill in
`Emulator.openai_bills`), then the answer is lost and only the client's
timeout ends the request. Unlike `hang_rate`, which strikes before the
handler and costs nothing, it makes a timeout that OpenAI charged for, which
a client must not refund. It is drawn from its own generator, once per
admitted request.

`shuffle_rate` (OpenAI only) is not malformation: every item keeps its
`index`, as the API promises, but the `data` list comes in a random order, so
a client that trusts the list order rather than `index` gets vectors mixed
up. It is drawn from its own generator, once per 200, so turning it on
leaves every other fault's draws as they were. A shuffled answer that is also
`missing_item` loses a random item rather than the last.

Validation names the offending field (`openai.error_rate: must be between 0
and 1, got 2`), whether the plan came from JSON or from Python.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar

import orjson

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_T = TypeVar("_T", bound="DataclassInstance")

Range = tuple[float, float]
"""Seconds, as (min, max); a fixed value is (v, v)."""

OPENAI_MALFORMED_KINDS: Final = ("invalid_json", "wrong_shape", "wrong_dims", "missing_item")
LLAMAPARSE_MALFORMED_KINDS: Final = ("invalid_json", "wrong_shape")


class FaultPlanError(ValueError):
    """A plan that cannot be used; `field` is the dotted path of the bad field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def within(self, section: str) -> FaultPlanError:
        """The same error, with its field path prefixed by `section`."""
        return FaultPlanError(f"{section}.{self.field}", self.reason)


def _check_rate(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise FaultPlanError(name, f"must be between 0 and 1, got {value:g}")


def _check_status(name: str, value: int) -> None:
    if not 400 <= value <= 599:
        raise FaultPlanError(name, f"must be an HTTP error status (400..599), got {value}")


def _check_range(name: str, value: Range) -> None:
    low, high = value
    if not 0.0 <= low <= high:
        raise FaultPlanError(name, f"must satisfy 0 <= min <= max, got [{low:g}, {high:g}]")


def _check_positive(name: str, value: float) -> None:
    if value <= 0:
        raise FaultPlanError(name, f"must be positive, got {value:g}")


@dataclass(frozen=True)
class ProviderFaults:
    """The faults both providers share; a base for `OpenAIPlan` and `LlamaParsePlan`.

    `KINDS` lists the malformed kinds the provider supports.
    """

    KINDS: ClassVar[tuple[str, ...]] = ()

    latency_s: Range = (0.0, 0.0)
    error_rate: float = 0.0
    error_status: int = 503
    outages: tuple[Range, ...] = ()
    outage_status: int = 503
    hang_rate: float = 0.0
    malformed_rate: float = 0.0
    malformed_kinds: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_range("latency_s", self.latency_s)
        for name in ("error_rate", "hang_rate", "malformed_rate"):
            _check_rate(name, getattr(self, name))
        _check_status("error_status", self.error_status)
        _check_status("outage_status", self.outage_status)
        for index, (start, end) in enumerate(self.outages):
            if not 0.0 <= start < end:
                raise FaultPlanError(
                    f"outages[{index}]", f"must satisfy 0 <= start < end, got [{start:g}, {end:g}]"
                )
        if not self.malformed_kinds:
            raise FaultPlanError("malformed_kinds", f"must name at least one of {list(self.KINDS)}")
        for kind in self.malformed_kinds:
            if kind not in self.KINDS:
                raise FaultPlanError(
                    "malformed_kinds", f"unknown kind {kind!r}; choose from {list(self.KINDS)}"
                )


@dataclass(frozen=True)
class OpenAIPlan(ProviderFaults):
    """OpenAI faults plus the account's limits."""

    KINDS: ClassVar[tuple[str, ...]] = OPENAI_MALFORMED_KINDS

    malformed_kinds: tuple[str, ...] = OPENAI_MALFORMED_KINDS
    rpm: int = 3000
    tpm: int = 1_000_000
    quota_exhausted: bool = False
    shuffle_rate: float = 0.0
    lost_answer_rate: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive("rpm", self.rpm)
        _check_positive("tpm", self.tpm)
        _check_rate("shuffle_rate", self.shuffle_rate)
        _check_rate("lost_answer_rate", self.lost_answer_rate)


@dataclass(frozen=True)
class WebhookPlan:
    """How LlamaParse's webhook deliveries misbehave."""

    delay_s: Range = (0.0, 0.0)
    drop_rate: float = 0.0
    duplicate_rate: float = 0.0
    bad_signature_rate: float = 0.0
    retry_backoff_s: tuple[float, ...] = (1.0, 2.0, 4.0)
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        _check_range("delay_s", self.delay_s)
        for name in ("drop_rate", "duplicate_rate", "bad_signature_rate"):
            _check_rate(name, getattr(self, name))
        for index, pause in enumerate(self.retry_backoff_s):
            if pause < 0:
                raise FaultPlanError(f"retry_backoff_s[{index}]", f"must be >= 0, got {pause:g}")
        _check_positive("timeout_s", self.timeout_s)


@dataclass(frozen=True)
class LlamaParsePlan(ProviderFaults):
    """LlamaParse faults plus job timing, the upload limit and webhook behaviour."""

    KINDS: ClassVar[tuple[str, ...]] = LLAMAPARSE_MALFORMED_KINDS

    malformed_kinds: tuple[str, ...] = LLAMAPARSE_MALFORMED_KINDS
    parse_time_s: Range = (1.0, 1.0)
    upload_limit: int = 15
    upload_window_s: float = 10.0
    upload_retry_after: bool = False
    v2_upload_limit: int = 50
    page_failure_rate: float = 0.0
    lost_upload_answer_rate: float = 0.0
    webhook: WebhookPlan = field(default_factory=WebhookPlan)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_range("parse_time_s", self.parse_time_s)
        _check_positive("upload_limit", self.upload_limit)
        _check_positive("upload_window_s", self.upload_window_s)
        _check_positive("v2_upload_limit", self.v2_upload_limit)
        _check_rate("page_failure_rate", self.page_failure_rate)
        _check_rate("lost_upload_answer_rate", self.lost_upload_answer_rate)


@dataclass(frozen=True)
class FaultPlan:
    """The whole plan. The default plan injects nothing and enforces the default limits."""

    seed: int | None = None
    openai: OpenAIPlan = field(default_factory=OpenAIPlan)
    llamaparse: LlamaParsePlan = field(default_factory=LlamaParsePlan)


# -- JSON ---------------------------------------------------------------------
# Converters check types and shapes only; values are checked once, by the
# dataclasses' __post_init__, so a plan built in Python is held to the same rules.

Converter = Callable[[object, str], object]


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FaultPlanError(name, f"must be a number, got {value!r}")
    return float(value)


def _integer(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FaultPlanError(name, f"must be an integer, got {value!r}")
    return value


def _boolean(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise FaultPlanError(name, f"must be true or false, got {value!r}")
    return value


def _range(value: object, name: str) -> Range:
    if isinstance(value, list):
        if len(value) != 2:
            raise FaultPlanError(name, f"must be a number or [min, max], got {value!r}")
        return _number(value[0], f"{name}[0]"), _number(value[1], f"{name}[1]")
    seconds = _number(value, name)
    return seconds, seconds


def _windows(value: object, name: str) -> tuple[Range, ...]:
    if not isinstance(value, list):
        raise FaultPlanError(name, f"must be a list of [start_s, end_s], got {value!r}")
    windows = []
    for index, item in enumerate(value):
        if not isinstance(item, list):
            raise FaultPlanError(f"{name}[{index}]", f"must be [start_s, end_s], got {item!r}")
        windows.append(_range(item, f"{name}[{index}]"))
    return tuple(windows)


def _numbers(value: object, name: str) -> tuple[float, ...]:
    if not isinstance(value, list):
        raise FaultPlanError(name, f"must be a list of numbers, got {value!r}")
    return tuple(_number(item, f"{name}[{index}]") for index, item in enumerate(value))


def _strings(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise FaultPlanError(name, f"must be a list of strings, got {value!r}")
    return tuple(value)


def _webhook(value: object, name: str) -> WebhookPlan:
    return _section(WebhookPlan, value, name)


_CONVERTERS: Final[Mapping[str, Converter]] = {
    "latency_s": _range,
    "error_rate": _number,
    "error_status": _integer,
    "outages": _windows,
    "outage_status": _integer,
    "hang_rate": _number,
    "malformed_rate": _number,
    "malformed_kinds": _strings,
    "rpm": _integer,
    "tpm": _integer,
    "quota_exhausted": _boolean,
    "shuffle_rate": _number,
    "lost_answer_rate": _number,
    "parse_time_s": _range,
    "upload_limit": _integer,
    "upload_window_s": _number,
    "upload_retry_after": _boolean,
    "v2_upload_limit": _integer,
    "page_failure_rate": _number,
    "lost_upload_answer_rate": _number,
    "webhook": _webhook,
    "delay_s": _range,
    "drop_rate": _number,
    "duplicate_rate": _number,
    "bad_signature_rate": _number,
    "retry_backoff_s": _numbers,
    "timeout_s": _number,
}


def _section(cls: type[_T], value: object, name: str) -> _T:
    if not isinstance(value, dict):
        raise FaultPlanError(name, f"must be an object, got {value!r}")
    known = {spec.name for spec in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, item in value.items():
        if key not in known:
            raise FaultPlanError(f"{name}.{key}", f"unknown field; expected one of {sorted(known)}")
        kwargs[key] = _CONVERTERS[key](item, f"{name}.{key}")
    try:
        return cls(**kwargs)
    except FaultPlanError as exc:
        raise exc.within(name) from None


def plan_from_json(document: object) -> FaultPlan:
    """A plan from parsed JSON; raises `FaultPlanError` naming the first bad field."""
    if not isinstance(document, dict):
        raise FaultPlanError("plan", f"must be a JSON object, got {document!r}")
    unknown = sorted(set(document) - {"seed", "openai", "llamaparse"})
    if unknown:
        raise FaultPlanError(unknown[0], "unknown field; expected seed, openai or llamaparse")
    seed = document.get("seed")
    return FaultPlan(
        seed=None if seed is None else _integer(seed, "seed"),
        openai=_section(OpenAIPlan, document.get("openai", {}), "openai"),
        llamaparse=_section(LlamaParsePlan, document.get("llamaparse", {}), "llamaparse"),
    )


def plan_from_bytes(raw: bytes) -> FaultPlan:
    """A plan from JSON text."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise FaultPlanError("plan", f"is not valid JSON: {exc}") from None
    return plan_from_json(document)


def load_plan(path: str | Path) -> FaultPlan:
    """A plan from a JSON file (`OSError` if it cannot be read)."""
    return plan_from_bytes(Path(path).read_bytes())


def plan_to_json(plan: FaultPlan) -> dict[str, Any]:
    """The plan as JSON-ready data, in the schema `plan_from_json` reads."""
    document: dict[str, Any] = orjson.loads(orjson.dumps(plan))
    return document

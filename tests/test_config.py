"""Configuration from the environment: parsing, defaults, and errors that name their variable."""

from __future__ import annotations

import asyncio
import io
import re
from dataclasses import astuple, fields, replace
from pathlib import Path
from typing import Any

import pytest

from resilience.breaker import BreakerPolicy
from resilience.config import (
    CONFIG_SETTINGS,
    PROVIDER_SETTINGS,
    SHARED_SETTINGS,
    Config,
    ProviderSettings,
    SharedSettings,
    describe_variables,
    load_config,
    variable_name,
)
from resilience.errors import ConfigError
from resilience.router import ServiceMode
from resilience.testing import run_virtual


def config_error(environ: dict[str, str], providers: tuple[str, ...] = ("openai",)) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(environ, providers)
    return str(caught.value)


def test_defaults() -> None:
    config = load_config({}, ["openai", "anthropic"])
    assert config == Config(
        service_mode=ServiceMode.HYBRID,
        log_path=None,
        db_url=None,
        providers={"openai": ProviderSettings(), "anthropic": ProviderSettings()},
    )
    settings = config.providers["openai"]
    assert settings.max_attempts == 4
    assert settings.rpm is None
    assert settings.max_wait_s is None
    assert settings.cooldown_s is None


@pytest.mark.parametrize(
    ("suffix", "raw", "attr", "value"),
    [
        ("RPM", "60", "rpm", 60),
        ("TPM", "90000", "tpm", 90_000),
        ("DAILY_BUDGET_USD", "12.5", "daily_budget_usd", 12.5),
        ("HOURLY_BUDGET_USD", "2", "hourly_budget_usd", 2.0),
        ("DAILY_REQUESTS", "10000", "daily_requests", 10_000),
        ("HOURLY_REQUESTS", "500", "hourly_requests", 500),
        ("MAX_ATTEMPTS", "1", "max_attempts", 1),
        ("MAX_WAIT_S", "2.5", "max_wait_s", 2.5),
        ("MAX_WAIT_S", "0", "max_wait_s", 0.0),
        ("FAILURE_THRESHOLD", "3", "failure_threshold", 3),
        ("COOLDOWN_S", "12.5", "cooldown_s", 12.5),
        ("COOLDOWN_MAX_S", "600", "cooldown_max_s", 600.0),
        ("HALF_OPEN_MAX_CALLS", "2", "half_open_max_calls", 2),
        ("PROBE_TIMEOUT_S", "10", "probe_timeout_s", 10.0),
        ("SLOW_CALL_S", "2.5", "slow_call_s", 2.5),
        ("RPM", "  60\n", "rpm", 60),
    ],
)
def test_each_provider_variable_is_parsed(suffix: str, raw: str, attr: str, value: float) -> None:
    config = load_config({f"BREAKWATER_OPENAI_{suffix}": raw}, ["openai", "anthropic"])
    changes: dict[str, Any] = {attr: value}
    assert config.providers["openai"] == replace(ProviderSettings(), **changes)
    assert type(getattr(config.providers["openai"], attr)) is type(value)
    assert config.providers["anthropic"] == ProviderSettings()


def test_global_variables() -> None:
    environ = {
        "SERVICE_MODE": " Mock ",
        "BREAKWATER_LOG": "/var/log/breakwater.jsonl",
        "BREAKWATER_DB": "postgresql://app:hunter2@db/breakwater",
    }
    config = load_config(environ, [])
    assert config.service_mode == "mock"
    assert config.log_path == "/var/log/breakwater.jsonl"
    assert config.db_url == "postgresql://app:hunter2@db/breakwater"
    assert config.providers == {}


@pytest.mark.parametrize("mode", ["mock", "real", "hybrid", "REAL"])
def test_service_modes(mode: str) -> None:
    service_mode = load_config({"SERVICE_MODE": mode}, []).service_mode
    assert service_mode is ServiceMode(mode.lower())


def test_empty_values_count_as_unset() -> None:
    environ = {"SERVICE_MODE": "", "BREAKWATER_LOG": " ", "BREAKWATER_OPENAI_RPM": ""}
    assert load_config(environ, ["openai"]) == load_config({}, ["openai"])


def test_provider_names_become_upper_case_with_underscores() -> None:
    assert variable_name("azure-openai.eu", "rpm") == "BREAKWATER_AZURE_OPENAI_EU_RPM"
    config = load_config({"BREAKWATER_AZURE_OPENAI_EU_RPM": "7"}, ["azure-openai.eu"])
    assert config.providers["azure-openai.eu"].rpm == 7


_INTEGER = "expected a positive integer"
_NUMBER = "expected a positive number"


@pytest.mark.parametrize(
    ("suffix", "raw", "expected"),
    [
        ("RPM", "abc", _INTEGER),
        ("RPM", "0", _INTEGER),
        ("RPM", "-5", _INTEGER),
        ("RPM", "60.0", _INTEGER),
        ("RPM", "+5", _INTEGER),
        ("TPM", "1e5", _INTEGER),
        ("DAILY_BUDGET_USD", "ten", _NUMBER),
        ("DAILY_BUDGET_USD", "0", _NUMBER),
        ("HOURLY_BUDGET_USD", "nan", _NUMBER),
        ("HOURLY_BUDGET_USD", "inf", _NUMBER),
        ("DAILY_REQUESTS", "1,000", _INTEGER),
        ("HOURLY_REQUESTS", "0", _INTEGER),
        ("MAX_ATTEMPTS", "0", _INTEGER),
        ("MAX_WAIT_S", "-0.5", "expected a number of seconds, 0 or more"),
        ("MAX_WAIT_S", "soon", "expected a number of seconds, 0 or more"),
        ("FAILURE_THRESHOLD", "0", _INTEGER),
        ("COOLDOWN_S", "0", _NUMBER),
        ("COOLDOWN_MAX_S", "-300", _NUMBER),
        ("HALF_OPEN_MAX_CALLS", "1.5", _INTEGER),
        ("PROBE_TIMEOUT_S", "0", _NUMBER),
        ("SLOW_CALL_S", "0", _NUMBER),
    ],
)
def test_bad_values_name_the_variable_value_and_what_is_accepted(
    suffix: str, raw: str, expected: str
) -> None:
    name = f"BREAKWATER_OPENAI_{suffix}"
    assert config_error({name: raw}) == f"{name}={raw!r} is not valid: {expected}"


def test_bad_service_mode() -> None:
    assert config_error({"SERVICE_MODE": "prod"}) == (
        "SERVICE_MODE='prod' is not valid: expected one of mock, real, hybrid"
    )


def test_every_problem_is_reported_at_once() -> None:
    message = config_error(
        {
            "SERVICE_MODE": "prod",
            "BREAKWATER_OPENAI_RPM": "abc",
            "BREAKWATER_ANTHROPIC_TPM": "0",
            "BREAKWATER_OPENAI_RMP": "60",
        },
        ("openai", "anthropic"),
    )
    lines = message.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("BREAKWATER_OPENAI_RMP is not a known variable")
    assert lines[1:] == [
        "SERVICE_MODE='prod' is not valid: expected one of mock, real, hybrid",
        "BREAKWATER_OPENAI_RPM='abc' is not valid: expected a positive integer",
        "BREAKWATER_ANTHROPIC_TPM='0' is not valid: expected a positive integer",
    ]


OPENAI_NAMES = ", ".join(
    f"BREAKWATER_OPENAI_{suffix}"
    for suffix in (
        "RPM",
        "TPM",
        "DAILY_BUDGET_USD",
        "HOURLY_BUDGET_USD",
        "DAILY_REQUESTS",
        "HOURLY_REQUESTS",
        "MAX_ATTEMPTS",
        "MAX_WAIT_S",
        "FAILURE_THRESHOLD",
        "COOLDOWN_S",
        "COOLDOWN_MAX_S",
        "HALF_OPEN_MAX_CALLS",
        "PROBE_TIMEOUT_S",
        "SLOW_CALL_S",
    )
)


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("BREAKWATER_OPENAI_RMP", "BREAKWATER_OPENAI_RPM"),  # swapped letters
        ("BREAKWATER_OPENAI_TMP", "BREAKWATER_OPENAI_TPM"),
        ("BREAKWATER_OPENAI_COOLDOWN", "BREAKWATER_OPENAI_COOLDOWN_S"),  # missing unit
        ("BREAKWATER_OPENAI_MAX_ATTEMPT", "BREAKWATER_OPENAI_MAX_ATTEMPTS"),
        ("breakwater_openai_rpm", "BREAKWATER_OPENAI_RPM"),  # the OS does not match case
        ("BREAKWATER_OPENIA_RPM", "BREAKWATER_OPENAI_RPM"),  # misspelt provider
    ],
)
def test_misspelt_provider_variable_is_an_error(name: str, meant: str) -> None:
    assert config_error({name: "60"}) == (
        f"{name} is not a known variable; did you mean {meant}? Valid names: {OPENAI_NAMES}"
    )


def test_unknown_name_under_a_configured_provider_is_an_error_even_if_not_close() -> None:
    assert config_error({"BREAKWATER_OPENAI_REQUESTS_PER_SECOND": "5"}) == (
        "BREAKWATER_OPENAI_REQUESTS_PER_SECOND is not a known variable. "
        f"Valid names: {OPENAI_NAMES}"
    )


def test_misspelt_global_variable_is_an_error() -> None:
    assert config_error({"BREAKWATER_LGO": "x.jsonl"}) == (
        "BREAKWATER_LGO is not a known variable; did you mean BREAKWATER_LOG? "
        "Valid names: SERVICE_MODE, BREAKWATER_LOG, BREAKWATER_DB, BREAKWATER_REDIS_URL, "
        "BREAKWATER_REDIS_BUDGET_WHEN_DOWN, BREAKWATER_REDIS_FALLBACK_FRACTION, "
        "BREAKWATER_BREAKER_SHARING, BREAKWATER_BREAKER_QUORUM"
    )


def test_unrelated_variables_are_ignored() -> None:
    environ = {
        "BREAKWATER_ANTHROPIC_RPM": "not even a number",  # a provider not configured here
        "BREAKWATER_GEMINI_RPM": "60",  # as long as OPENAI_RPM, but more than two slips away
        "BREAKWATER_TEST_REDIS_URL": "redis://127.0.0.1:1/0",  # contains a known name
        "BREAKWATER_HOME": "/opt/breakwater",
        "BREAKWATER_X": "1",  # nothing left after the prefix to misspell
        "OPENAI_API_KEY": "sk-real",
        "RPM": "x",
        "PATH": "/usr/bin",
    }
    assert load_config(environ, ["openai"]) == load_config({}, ["openai"])


def test_breaker_policy_applies_overrides_and_keeps_other_defaults() -> None:
    environ = {
        "BREAKWATER_OPENAI_FAILURE_THRESHOLD": "3",
        "BREAKWATER_OPENAI_COOLDOWN_S": "5",
        "BREAKWATER_OPENAI_COOLDOWN_MAX_S": "60",
        "BREAKWATER_OPENAI_HALF_OPEN_MAX_CALLS": "2",
        "BREAKWATER_OPENAI_PROBE_TIMEOUT_S": "10",
        "BREAKWATER_OPENAI_SLOW_CALL_S": "4",
    }
    policy = load_config(environ, ["openai"]).providers["openai"].breaker_policy()
    assert policy == replace(
        BreakerPolicy(),
        failure_threshold=3,
        cooldown_s=5.0,
        cooldown_max_s=60.0,
        half_open_max_calls=2,
        probe_timeout_s=10.0,
        slow_call_s=4.0,
    )
    assert ProviderSettings().breaker_policy() == BreakerPolicy()
    assert ProviderSettings(cooldown_s=7.0).breaker_policy() == replace(
        BreakerPolicy(), cooldown_s=7.0
    )


def test_breaker_combination_error_names_the_variables_involved() -> None:
    assert config_error({"BREAKWATER_OPENAI_COOLDOWN_S": "600"}) == (
        "BREAKWATER_OPENAI_COOLDOWN_S='600' and "
        "BREAKWATER_OPENAI_COOLDOWN_MAX_S (unset, default 300) are not valid together: "
        "BreakerPolicy.cooldown_max_s must be at least cooldown_s"
    )
    environ = {"BREAKWATER_OPENAI_COOLDOWN_S": "60", "BREAKWATER_OPENAI_COOLDOWN_MAX_S": "30"}
    assert config_error(environ) == (
        "BREAKWATER_OPENAI_COOLDOWN_S='60' and BREAKWATER_OPENAI_COOLDOWN_MAX_S='30' "
        "are not valid together: BreakerPolicy.cooldown_max_s must be at least cooldown_s"
    )


def test_secret_values_never_appear_in_errors() -> None:
    message = config_error({"BREAKWATER_OPENAI_API_KEYY": "sk-secret"})
    assert message.startswith("BREAKWATER_OPENAI_API_KEYY is not a known variable")
    assert "sk-secret" not in message
    # A bad value in a variable whose name says secret is described, never echoed.
    message = config_error({"BREAKWATER_SECRET_AI_RPM": "sk-abc123"}, ("secret-ai",))
    assert message == (
        "BREAKWATER_SECRET_AI_RPM (value hidden) is not valid: expected a positive integer"
    )


def test_database_url_stays_out_of_the_repr() -> None:
    config = load_config({"BREAKWATER_DB": "postgresql://app:hunter2@db/bw"}, ["openai"])
    assert "hunter2" not in repr(config)
    assert "service_mode=<ServiceMode.HYBRID: 'hybrid'>" in repr(config)


def test_providers_that_would_share_variables_are_rejected() -> None:
    with pytest.raises(ConfigError, match=re.escape("'open-ai' and 'open_ai'")):
        load_config({}, ["open-ai", "open_ai"])


def test_a_single_string_is_not_a_list_of_providers() -> None:
    with pytest.raises(TypeError, match="not one string"):
        load_config({}, "openai")


def test_describe_variables_covers_exactly_what_load_config_reads() -> None:
    described = describe_variables(["openai", "anthropic"])
    names = [name for name, _ in described]
    assert names[:3] == ["SERVICE_MODE", "BREAKWATER_LOG", "BREAKWATER_DB"]
    assert len(names) == len(set(names)) == 8 + 2 * 14
    assert all(meaning for _, meaning in described)
    # Every described name is accepted (no typo error) and actually read.
    environ = {name: "1" for name in names} | {
        "SERVICE_MODE": "real",
        "BREAKWATER_REDIS_URL": "redis://127.0.0.1:1/0",
        "BREAKWATER_REDIS_BUDGET_WHEN_DOWN": "local",
        "BREAKWATER_REDIS_FALLBACK_FRACTION": "0.5",
        "BREAKWATER_BREAKER_SHARING": "quorum",
        "BREAKWATER_BREAKER_QUORUM": "3",
    }
    config = load_config(environ, ["openai", "anthropic"])
    assert config.log_path == "1"
    assert config.db_url == "1"
    assert config.shared == SharedSettings("redis://127.0.0.1:1/0", "local", 0.5, "quorum", 3)
    for settings in config.providers.values():
        assert set(astuple(settings)) == {1}


def test_descriptions_state_defaults() -> None:
    meanings = dict(describe_variables(["openai"]))
    assert meanings["BREAKWATER_OPENAI_MAX_ATTEMPTS"].endswith("default 4")
    assert meanings["BREAKWATER_OPENAI_COOLDOWN_S"].endswith("default 30")
    assert meanings["BREAKWATER_OPENAI_RPM"] == (
        "openai: requests per minute (token bucket); a positive integer; unset: no limit"
    )


def test_settings_build_a_guard_with_buckets_budget_retry_and_breaker() -> None:
    config = load_config(
        {
            "BREAKWATER_OPENAI_RPM": "120",
            "BREAKWATER_OPENAI_TPM": "6000",
            "BREAKWATER_OPENAI_DAILY_BUDGET_USD": "2.5",
            "BREAKWATER_OPENAI_MAX_ATTEMPTS": "2",
            "BREAKWATER_OPENAI_FAILURE_THRESHOLD": "7",
        },
        ["openai", "llamaparse"],
    )
    guard = config.providers["openai"].guard("openai")
    assert guard.requests is not None
    assert (guard.requests.capacity, guard.requests.refill_per_s) == (120, 2.0)
    assert guard.tokens is not None
    assert (guard.tokens.capacity, guard.tokens.refill_per_s) == (6000, 100.0)
    assert guard.budget is not None
    assert guard.budget.limits.daily_usd == 2.5
    assert guard.retry.max_attempts == 2
    assert guard.breaker.policy.failure_threshold == 7

    async def spend() -> float:
        async def call() -> str:
            await asyncio.sleep(0)
            return "ok"

        await guard.call(call, cost=1.0)
        spent, _ = await guard.budget.spent("day") if guard.budget else (0.0, 0)
        return spent

    assert run_virtual(spend()) == 1.0
    unlimited = config.providers["llamaparse"].guard("llamaparse")
    assert (unlimited.requests, unlimited.tokens, unlimited.budget) == (None, None, None)


def test_every_settings_field_is_declared_by_exactly_one_row() -> None:
    """The typed fields and the table cannot drift: a field without a row is never read."""
    tables = (
        (Config, CONFIG_SETTINGS, {"shared", "providers"}),
        (SharedSettings, SHARED_SETTINGS, set()),
        (ProviderSettings, PROVIDER_SETTINGS, set()),
    )
    for owner, rows, composed in tables:
        attrs = [row.attr for row in rows]
        assert sorted(attrs) == sorted({f.name for f in fields(owner)} - composed), owner
    names = [row.name for row in CONFIG_SETTINGS + SHARED_SETTINGS + PROVIDER_SETTINGS]
    assert len(names) == len(set(names))


def test_the_env_example_is_generated_from_the_settings() -> None:
    from state.app.common import DEFAULT_DB
    from state.app.env_example import render

    # resilience cannot import the commands' default store, so its row states it; keep them one
    (db,) = (row for row in CONFIG_SETTINGS if row.name == "BREAKWATER_DB")
    assert db.default == f"unset: {DEFAULT_DB}"

    example = Path(__file__).resolve().parent.parent / ".env.example"
    assert example.read_text() == render(), (
        ".env.example disagrees with the settings: run "
        "`python -m state.app.env_example > .env.example`"
    )
    for name, _ in describe_variables(["openai", "llamaparse"]):
        assert example.read_text().count(f"{name}=") == 1, name


def test_the_env_example_is_a_valid_configuration() -> None:
    example = Path(__file__).resolve().parent.parent / ".env.example"
    environ: dict[str, str] = {}
    for line in example.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            environ[name.strip()] = value.strip()
    config = load_config(environ, ["openai", "llamaparse"])
    assert config.service_mode == "hybrid"
    assert config.providers["openai"].daily_budget_usd == 1.0
    assert config.providers["openai"].tpm == 1_000_000


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        (
            "BREAKWATER_REDIS_URL",
            "http://user:hunter2@cache:6379",
            "BREAKWATER_REDIS_URL (value hidden) is not valid: expected a URL starting with "
            "redis://, rediss://, unix://",
        ),
        (
            "BREAKWATER_REDIS_BUDGET_WHEN_DOWN",
            "open",
            "BREAKWATER_REDIS_BUDGET_WHEN_DOWN='open' is not valid: expected one of closed, local",
        ),
        (
            "BREAKWATER_REDIS_FALLBACK_FRACTION",
            "1.5",
            "BREAKWATER_REDIS_FALLBACK_FRACTION='1.5' is not valid: expected a number in (0, 1]",
        ),
        (
            "BREAKWATER_BREAKER_QUORUM",
            "0",
            "BREAKWATER_BREAKER_QUORUM='0' is not valid: expected a positive integer",
        ),
    ],
)
def test_bad_shared_settings_name_the_variable(name: str, raw: str, expected: str) -> None:
    message = config_error({name: raw})
    assert message == expected
    assert "hunter2" not in message


def test_quorum_sharing_needs_redis() -> None:
    assert config_error({"BREAKWATER_BREAKER_SHARING": "quorum"}) == (
        "BREAKWATER_BREAKER_SHARING=quorum needs BREAKWATER_REDIS_URL to be set"
    )


def test_redis_url_stays_out_of_the_repr() -> None:
    url = "redis://:hunter2@cache:6379/0"
    config = load_config({"BREAKWATER_REDIS_URL": url}, ["openai"])
    assert config.shared.redis_url == url
    assert "hunter2" not in repr(config)


def test_the_start_banner_names_redis_without_its_password() -> None:
    """`breakwater` announces the shared limits and their policy; the URL's password stays out."""
    from state.app.common import announce
    from state.pipeline.wiring import Pipeline

    environ = {
        "BREAKWATER_REDIS_URL": "redis://:hunter2@127.0.0.1:1/0",  # never connected to here
        "BREAKWATER_REDIS_BUDGET_WHEN_DOWN": "local",
        "BREAKWATER_OPENAI_RPM": "60",
    }

    async def banner() -> str:
        pipeline = Pipeline.from_env(environ)
        out = io.StringIO()
        announce(pipeline, Path("jobs.sqlite3"), out)
        assert pipeline.shared is not None
        assert set(pipeline.shared.gates) == {"openai"}  # the provider with a limit
        assert pipeline.guard("embed").shared is pipeline.shared.gates["openai"]
        assert pipeline.guard("parse").shared is None
        await pipeline.close()
        return out.getvalue()

    text = asyncio.run(banner())
    assert (
        "Limits and budgets shared through Redis at redis://127.0.0.1:1/0 (unreachable: "
        "budgets local, local limits at 0.25 of the rate; breakers local)"
    ) in text
    assert "hunter2" not in text

"""Developer sessions. `nox` alone runs what CI runs: lint, typecheck, tests, chaos.

`mutants` (the hand-written bugs, each a full chaos run) and `mutation`
(mutmut) take longer than CI allows, so they run on a schedule: see README."""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "chaos"]
nox.options.error_on_missing_interpreters = True

PACKAGES = ["resilience", "providers", "state", "simulations"]
CHAOS = "tests/test_chaos.py"


def install(session: nox.Session) -> None:
    session.install("-e", ".[dev]")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, then the architecture: import-linter's layers and deptry's declared imports.

    import-linter holds the layers (resilience <- providers <- state <- simulations)
    and keeps `resilience` free of aiohttp; deptry checks that what the wheel
    ships imports only declared dependencies, and that each one is used.
    """
    install(session)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports")
    session.run("deptry", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the four packages."""
    install(session)
    session.run("mypy", "--strict", *PACKAGES)


@nox.session
def tests(session: nox.Session) -> None:
    """The whole pytest suite."""
    install(session)
    session.run("pytest", *session.posargs)


@nox.session
def chaos(session: nox.Session) -> None:
    """The Hypothesis property tests, then the pipeline chaos simulation at full size.

    Profile `chaos-ci` under CI (derandomized, no database), else
    `chaos-explore`. The simulation's two shards run side by side, one per
    core (pytest-xdist). Prints the simulation's statistics, and fails if any
    coverage event never happened. `-- --hypothesis-seed=N` replays a run.
    """
    install(session)
    profile = "chaos-ci" if os.environ.get("CI") else "chaos-explore"
    env = {"HYPOTHESIS_PROFILE": profile, "PYTHONHASHSEED": "0"}
    common = ["-p", "no:cacheprovider", *session.posargs]
    session.run("pytest", "-m", "hypothesis", "--ignore", CHAOS, *common, env=env)
    # Two shards and the determinism test on two workers: xdist deals fewer tests than
    # twice its workers round robin, so the shards never queue behind each other.
    chaos_env = {**env, "BREAKWATER_CHAOS_COVERAGE": "required"}
    session.run("pytest", CHAOS, "-n", "2", *common, env=chaos_env)


@nox.session
def mutants(session: nox.Session) -> None:
    """Each deliberate bug in simulations/mutants.py, one at a time: the chaos suite (profile
    chaos-ci) must catch each. Prints a table: mutant, the invariant that caught it, seconds."""
    install(session)
    session.run("python", "-m", "simulations.mutants")


@nox.session
def mutation(session: nox.Session) -> None:
    """mutmut over the resilience core and the job machine; not part of CI.

    Scheduled weekly and before a release rather than on every push: a full run
    takes about 9 minutes on two shared cores. The files and the tests that judge
    them are `[tool.mutmut]` in pyproject.toml; the survivors and what became of
    each are in the README. mutmut runs each mutant only against the tests that
    call the mutated function, forked from one warm process. `-- --max-children N`
    overrides the two workers; `mutmut browse` inspects `mutants/` afterwards.
    """
    install(session)
    session.run("mutmut", "run", *(session.posargs or ["--max-children", "2"]))
    session.run("mutmut", "results")


INTEGRATION_SERVERS = {
    "PostgreSQL": (
        "tests.postgres",
        "PostgreSQL binaries (initdb, pg_ctl) not found and BREAKWATER_TEST_POSTGRES_URL is unset",
    ),
    "Redis": (
        "tests.redis_server",
        "Redis (redis-server) not found and BREAKWATER_TEST_REDIS_URL is unset",
    ),
}
"""Server -> (the test module that prints where it is, what its absence means)."""


@nox.session
def integration(session: nox.Session) -> None:
    """The `postgres`- and `redis`-marked tests against real servers, which must be there.

    BREAKWATER_TEST_POSTGRES_URL names a PostgreSQL server (its role needs
    CREATEDB), BREAKWATER_TEST_REDIS_URL a Redis server (flushed by every test);
    otherwise the fixtures in tests/postgres.py and tests/redis_server.py start
    throwaway ones from the installed binaries (simulations/servers.py). If
    either server is missing, the session errors naming it rather than passing
    with its tests skipped, and BREAKWATER_REQUIRE_POSTGRES=1 and
    BREAKWATER_REQUIRE_REDIS=1 make any test that still cannot get a server fail.
    """
    install(session)
    missing = []
    for server, (module, absent) in INTEGRATION_SERVERS.items():
        where = session.run("python", "-m", module, silent=True)
        if isinstance(where, str) and where.strip():
            session.log(f"{server}: {where.strip()}")
        else:
            missing.append(absent)
    if missing:
        session.error("; ".join(missing) + ": the integration tests did NOT run")
    session.run(
        "pytest",
        "-m",
        "postgres or redis",
        *session.posargs,
        env={"BREAKWATER_REQUIRE_POSTGRES": "1", "BREAKWATER_REQUIRE_REDIS": "1"},
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Per-call overhead, throughput beside the openai SDK, the pipeline, its makespan over the
    providers' bound (virtual time, then `breakwater ingest` over loopback), the outage drill,
    and scaling over worker processes on PostgreSQL and Redis (servers started if installed)."""
    install(session)
    session.run("python", "-m", "simulations.bench.overhead", *session.posargs)
    session.run("python", "-m", "simulations.bench.throughput")
    session.run("python", "-m", "simulations.bench.pipeline")
    session.run("python", "-m", "simulations.bench.makespan")
    session.run("python", "-m", "simulations.bench.makespan_loopback")
    session.run("python", "-m", "simulations.bench.outage_drill")
    session.run("python", "-m", "simulations.bench.scaling")

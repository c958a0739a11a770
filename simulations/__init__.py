"""The simulations around Breakwater: the demo, the emulators, chaos, benchmarks, mutants."""

from resilience.events import quiet_until_configured

quiet_until_configured(__name__)  # see resilience.events

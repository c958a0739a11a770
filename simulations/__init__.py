"""What stands in for the world around the application, and the `breakwater` console script.

`simulations.cli` adds `demo` and `emulate` to the production commands of
`state.app.cli`; the rest is the demo, the provider emulators, throwaway
PostgreSQL and Redis servers, the bundled samples, and, from a checkout only,
the chaos simulation, the benchmarks and the mutants.
"""

from resilience.events import quiet_until_configured

quiet_until_configured(__name__)  # see resilience.events

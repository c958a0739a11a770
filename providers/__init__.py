"""Provider clients (OpenAI embeddings, LlamaParse), their mocks, and the HTTP seam.

`providers` builds on `resilience` and knows nothing of jobs: each client
turns one unit of work (an embedding batch, a document parse) into HTTP
requests through a `providers.transport.Transport`, and raises
`resilience.ProviderError` for the guard to classify.
"""

from resilience.events import quiet_until_configured

quiet_until_configured(__name__)  # see resilience.events

OPENAI = "openai"
LLAMAPARSE = "llamaparse"
PROVIDERS = (OPENAI, LLAMAPARSE)
"""Provider names, as used for guards, logs and BREAKWATER_<PROVIDER>_* variables."""

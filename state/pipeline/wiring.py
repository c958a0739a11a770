"""The wiring a worker needs: routed parse and embed, the chunking policy and the mode.

`Pipeline.from_env` reads the configuration (`resilience.config.load_config`)
and builds one guard per provider from it (budgets, limits, retries,
breaker), the real clients (`LlamaParse`, `OpenAIEmbeddings`) over one
transport, and their deterministic mocks.

Safety: money is spent only when the mode is REAL or HYBRID *and* the
provider's key is set. A provider without a key runs MOCK-only whatever the
mode, and `pipeline.no_key` is logged once at start. Each capability has its
own `Router`, so a key-less provider's results are marked `path="mock"`
(reason "mode") and count as degraded, ready for `backfill` once a key is set.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from providers import LLAMAPARSE, OPENAI
from providers.llamaparse.client import LlamaParse, LlamaParseConfig
from providers.llamaparse.mock import MockParser
from providers.llamaparse.webhooks import WebhookInbox
from providers.openai.client import DEFAULT_BASE_URL as OPENAI_DEFAULT_URL
from providers.openai.client import OpenAIConfig, OpenAIEmbeddings
from providers.openai.mock import MockEmbedder
from providers.transport import AiohttpTransport, Transport
from resilience import ConfigError, Guard, Router, ServiceMode
from resilience.config import SharedSettings, load_config
from resilience.events import emit
from resilience.ledger import LedgerStore
from state.pipeline.chunking import ChunkingPolicy

if TYPE_CHECKING:
    from resilience.shared.link import RedisShared

PARSE: Final = "parse"
EMBED: Final = "embed"
PROVIDER_OF: Final = {PARSE: LLAMAPARSE, EMBED: OPENAI}
"""Which provider serves each capability."""


@dataclass(frozen=True, slots=True)
class Capability:
    """One capability's real and mock implementations and the guard in front of the real one."""

    real: Callable[..., Awaitable[Any]]
    mock: Callable[..., Awaitable[Any]]
    guard: Guard
    keyed: bool
    """False when the provider has no key: the real implementation is never routed to."""


class Pipeline:
    """Routers for "parse" and "embed", the embedding client that plans batches, and chunking.

    `router(capability)` is the router a worker calls: in the configured
    mode, or MOCK for a provider without a key. `routers_for(mode)` builds
    routers in another mode over the same guards and clients (the backfill
    uses REAL).
    """

    def __init__(
        self,
        *,
        mode: ServiceMode,
        capabilities: Mapping[str, Capability],
        embedder: OpenAIEmbeddings,
        chunking: ChunkingPolicy,
        owned_transport: AiohttpTransport | None = None,
        parser: LlamaParse | None = None,
        shared: RedisShared | None = None,
    ) -> None:
        missing = {PARSE, EMBED} - set(capabilities)
        if missing:
            raise ValueError(f"a pipeline needs capabilities {sorted(missing)}")
        self.mode = ServiceMode(mode)
        self.capabilities = dict(capabilities)
        self.embedder = embedder
        self.chunking = chunking
        self._owned_transport = owned_transport
        self.parser = parser
        """The real LlamaParse client, when known: the API server asks it which jobs are ours."""
        self.shared = shared
        """The limits shared through Redis, when BREAKWATER_REDIS_URL is set; closed by `close`."""
        self._routers = self.routers_for(self.mode)

    def __repr__(self) -> str:
        keyed = sorted(name for name, cap in self.capabilities.items() if cap.keyed)
        return f"Pipeline(mode={self.mode.value}, keyed={keyed})"

    def routers_for(self, mode: ServiceMode) -> dict[str, Router]:
        """One router per capability in `mode`; MOCK for a capability with no key."""
        routers = {}
        for name, cap in self.capabilities.items():
            router = Router(mode if cap.keyed else ServiceMode.MOCK)
            router.register(name, real=cap.real, mock=cap.mock, guard=cap.guard)
            routers[name] = router
        return routers

    def router(self, capability: str) -> Router:
        return self._routers[capability]

    def guard(self, capability: str) -> Guard:
        return self.capabilities[capability].guard

    def can_spend(self, capability: str) -> bool:
        """True when `capability` may reach its real provider: a key is set."""
        return self.capabilities[capability].keyed

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str],
        *,
        transport: Transport | None = None,
        chunking: ChunkingPolicy | None = None,
        mock_parser: MockParser | None = None,
        mock_embedder: MockEmbedder | None = None,
        rng: random.Random | None = None,
        ledger: LedgerStore | None = None,
        inbox: WebhookInbox | None = None,
    ) -> Pipeline:
        """Build the pipeline `environ` describes (see README's tables).

        `transport` carries both clients' requests (default: a fresh
        `AiohttpTransport`, closed by `close`); base URLs come from
        OPENAI_BASE_URL and LLAMA_CLOUD_BASE_URL. `ledger` keeps the budgets'
        spend (pass `store.ledger()` so it survives restarts). `inbox` is
        where the LlamaParse client waits for its jobs' webhooks (the API
        server's inbox, when the worker runs in the server's process); it
        is used only when LLAMA_CLOUD_WEBHOOK_URL is set. Raises
        `ConfigError` for a bad value.
        """
        config = load_config(environ, (OPENAI, LLAMAPARSE))
        mode = ServiceMode(config.service_mode)
        owned: AiohttpTransport | None = None
        if transport is None:
            transport = owned = AiohttpTransport()
        shared: Transport = transport
        shared_limits = _open_shared(config.shared, rng)
        guards = {
            name: shared_limits.guard(name, config.providers[name])
            if shared_limits is not None
            else config.providers[name].guard(name, rng=rng, ledger=ledger)
            for name in (OPENAI, LLAMAPARSE)
        }

        openai_key = environ.get("OPENAI_API_KEY", "").strip()
        base_url = environ.get("OPENAI_BASE_URL", "").strip() or OPENAI_DEFAULT_URL
        # Without a key the client only plans batches: its real path is never routed to.
        openai_config = OpenAIConfig.from_env(environ) if openai_key else OpenAIConfig("", base_url)
        openai_guard = guards[OPENAI]
        buckets = (
            shared_limits.throttles(OPENAI)
            if shared_limits is not None
            else (openai_guard.requests, openai_guard.tokens)
        )
        embedder = OpenAIEmbeddings(openai_config, shared, buckets=buckets)
        mock_embed = mock_embedder or MockEmbedder(embedder.model, embedder.dimensions)

        parse_config = LlamaParseConfig.from_env(environ)
        if shared_limits is not None and (inbox is not None or parse_config.webhook_url):
            # Webhooks reach one server; with Redis, the parse may wait in any process.
            inbox = _shared_inbox(shared_limits)
        parser = LlamaParse(parse_config, shared, inbox=inbox)
        mock_parse = mock_parser or MockParser()

        keyed = {OPENAI: bool(openai_key), LLAMAPARSE: bool(parse_config.api_key)}
        if mode is not ServiceMode.MOCK:
            for provider, has_key in keyed.items():
                if not has_key:
                    emit(
                        "pipeline.no_key",
                        level="WARNING",
                        provider=provider,
                        mode=mode.value,
                        detail="no API key: this provider runs MOCK-only and spends nothing",
                    )
        capabilities = {
            PARSE: Capability(
                parser.parse, mock_parse.parse, guards[LLAMAPARSE], keyed[LLAMAPARSE]
            ),
            EMBED: Capability(
                embedder.embed_batch, mock_embed.embed_batch, openai_guard, keyed[OPENAI]
            ),
        }
        return cls(
            mode=mode,
            capabilities=capabilities,
            embedder=embedder,
            chunking=chunking or ChunkingPolicy(),
            owned_transport=owned,
            parser=parser,
            shared=shared_limits,
        )

    async def close(self) -> None:
        """Close the transport if `from_env` made it, and the link to Redis."""
        if self._owned_transport is not None:
            await self._owned_transport.close()
        if self.parser is not None and self.parser.inbox is not None:
            await self.parser.inbox.close()
        if self.shared is not None:
            await self.shared.close()


def _shared_inbox(shared: RedisShared) -> WebhookInbox:
    """An inbox whose accepted webhooks reach every process on the same Redis, listening."""
    from providers.llamaparse.relay import SharedInbox

    inbox = SharedInbox(shared.client)
    inbox.start()
    return inbox


def _open_shared(settings: SharedSettings, rng: random.Random | None) -> RedisShared | None:
    """The Redis link when BREAKWATER_REDIS_URL is set; it needs the `redis` extra."""
    if settings.redis_url is None:
        return None
    try:
        from resilience.shared.link import RedisShared
    except ImportError:
        raise ConfigError(
            "BREAKWATER_REDIS_URL is set but the redis package is missing: "
            "pip install 'breakwater[redis]'"
        ) from None
    return RedisShared(settings, rng=rng)

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
from providers.llamaparse.client import (
    Document,
    LlamaParse,
    LlamaParseConfig,
    ParsedDocument,
    UploadThrottle,
    estimate_cost_usd,
)
from providers.llamaparse.mock import MockParser
from providers.llamaparse.webhooks import WebhookInbox
from providers.openai.client import DEFAULT_BASE_URL as OPENAI_DEFAULT_URL
from providers.openai.client import OpenAIConfig, OpenAIEmbeddings
from providers.openai.mock import MockEmbedder
from providers.transport import AiohttpTransport, Transport
from resilience import ConfigError, Guard, Router, ServiceMode
from resilience.config import Config, SharedSettings, load_config
from resilience.events import emit
from resilience.ledger import LedgerStore
from state.pipeline.chunking import ChunkingPolicy

if TYPE_CHECKING:
    from resilience.shared.link import RedisShared

PARSE: Final = "parse"
SUBMIT: Final = "parse_submit"
"""A parse's upload alone: the worker's parse step, which records the remote job and lets
go (`state.pipeline.remote`). `PARSE` waits for the whole parse (the backfill's way)."""
EMBED: Final = "embed"
PROVIDER_OF: Final = {PARSE: LLAMAPARSE, SUBMIT: LLAMAPARSE, EMBED: OPENAI}
"""Which provider serves each capability."""


@dataclass(frozen=True, slots=True)
class Capability:
    """One capability's real and mock implementations and the guard in front of the real one."""

    real: Callable[..., Awaitable[Any]]
    mock: Callable[..., Awaitable[Any]]
    guard: Guard
    keyed: bool
    """False when the provider has no key: the real implementation is never routed to."""
    ready: Callable[[], Awaitable[None]] | None = None
    """A wait of `real`'s own, awaited by the guard before it admits each attempt."""


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

    def parse_estimate_usd(self, document: Document) -> float:
        """What to reserve for parsing `document`: at the client's tier and price when known."""
        if self.parser is None:
            return estimate_cost_usd(document)
        return self.parser.estimate_cost_usd(document)

    def __repr__(self) -> str:
        keyed = sorted(name for name, cap in self.capabilities.items() if cap.keyed)
        return f"Pipeline(mode={self.mode.value}, keyed={keyed})"

    def routers_for(self, mode: ServiceMode) -> dict[str, Router]:
        """One router per capability in `mode`; MOCK for a capability with no key."""
        routers = {}
        for name, cap in self.capabilities.items():
            router = Router(mode if cap.keyed else ServiceMode.MOCK)
            router.register(name, real=cap.real, mock=cap.mock, guard=cap.guard, ready=cap.ready)
            routers[name] = router
        return routers

    def router(self, capability: str) -> Router:
        return self._routers[capability]

    @property
    def routers(self) -> tuple[Router, ...]:
        """The routers `router` hands out, one per capability, for `Metrics.count_calls`."""
        return tuple(self._routers.values())

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
        mode = config.service_mode
        owned: AiohttpTransport | None = None
        if transport is None:
            transport = owned = AiohttpTransport()
        shared = _open_shared(config.shared, rng)
        guards = _guards(config, shared, rng, ledger)
        embedder = _embedder(environ, transport, guards[OPENAI], shared)
        parser = _parser(environ, transport, shared, inbox)
        keyed = {OPENAI: bool(_openai_key(environ)), LLAMAPARSE: bool(parser.config.api_key)}
        _warn_keyless(mode, keyed)
        mock_parse = mock_parser or MockParser()
        mock_embed = mock_embedder or MockEmbedder(embedder.model, embedder.dimensions)
        capabilities = {
            PARSE: Capability(
                parser.parse, mock_parse.parse, guards[LLAMAPARSE], keyed[LLAMAPARSE]
            ),
            # The upload throttle is waited before the guard admits the upload, so an
            # upload queued there when the breaker opens is refused, never sent.
            SUBMIT: Capability(
                parser.send,
                _named(mock_parse),
                guards[LLAMAPARSE],
                keyed[LLAMAPARSE],
                ready=parser.upload_slot,
            ),
            EMBED: Capability(
                embedder.embed_batch, mock_embed.embed_batch, guards[OPENAI], keyed[OPENAI]
            ),
        }
        return cls(
            mode=mode,
            capabilities=capabilities,
            embedder=embedder,
            chunking=chunking or ChunkingPolicy(),
            owned_transport=owned,
            parser=parser,
            shared=shared,
        )

    async def close(self) -> None:
        """Close the transport if `from_env` made it, and the link to Redis."""
        if self._owned_transport is not None:
            await self._owned_transport.close()
        if self.parser is not None and self.parser.inbox is not None:
            await self.parser.inbox.close()
        if self.shared is not None:
            await self.shared.close()


def _named(mock: MockParser) -> Callable[..., Awaitable[ParsedDocument]]:
    """The mock in `SUBMIT`'s place: it takes the upload's name and parses at once."""

    async def parse(document: Document, *, name: str | None = None) -> ParsedDocument:
        del name  # a mock uploads nothing
        return await mock.parse(document)

    return parse


def _guards(
    config: Config,
    shared: RedisShared | None,
    rng: random.Random | None,
    ledger: LedgerStore | None,
) -> dict[str, Guard]:
    """One guard per provider: over the limits shared through Redis, or local to this process."""
    if shared is not None:
        return {name: shared.guard(name, config.providers[name]) for name in (OPENAI, LLAMAPARSE)}
    return {
        name: config.providers[name].guard(name, rng=rng, ledger=ledger)
        for name in (OPENAI, LLAMAPARSE)
    }


def _openai_key(environ: Mapping[str, str]) -> str:
    return environ.get("OPENAI_API_KEY", "").strip()


def _embedder(
    environ: Mapping[str, str], transport: Transport, guard: Guard, shared: RedisShared | None
) -> OpenAIEmbeddings:
    """The OpenAI client, paced by the guard's buckets (or the shared ones) as it plans batches.

    Without a key it only plans batches: its real path is never routed to.
    """
    if _openai_key(environ):
        config = OpenAIConfig.from_env(environ)
    else:
        base_url = environ.get("OPENAI_BASE_URL", "").strip() or OPENAI_DEFAULT_URL
        config = OpenAIConfig("", base_url)
    buckets = shared.throttles(OPENAI) if shared is not None else (guard.requests, guard.tokens)
    return OpenAIEmbeddings(config, transport, buckets=buckets)


def _parser(
    environ: Mapping[str, str],
    transport: Transport,
    shared: RedisShared | None,
    inbox: WebhookInbox | None,
) -> LlamaParse:
    config = LlamaParseConfig.from_env(environ)
    if shared is None:
        return LlamaParse(config, transport, inbox=inbox)
    if inbox is not None or config.webhook_url:
        # Webhooks reach one server; with Redis, the parse may wait in any process.
        inbox = _shared_inbox(shared)
    return LlamaParse(config, transport, inbox=inbox, upload_bucket=_shared_uploads(shared, config))


def _warn_keyless(mode: ServiceMode, keyed: Mapping[str, bool]) -> None:
    """Log `pipeline.no_key` once per provider that a REAL or HYBRID pipeline runs MOCK-only."""
    if mode is ServiceMode.MOCK:
        return
    for provider, has_key in keyed.items():
        if not has_key:
            emit(
                "pipeline.no_key",
                level="WARNING",
                provider=provider,
                mode=mode.value,
                detail="no API key: this provider runs MOCK-only and spends nothing",
            )


def _shared_inbox(shared: RedisShared) -> WebhookInbox:
    """An inbox whose accepted webhooks reach every process on the same Redis, listening."""
    from providers.llamaparse.relay import SharedInbox

    inbox = SharedInbox(shared.client)
    inbox.start()
    return inbox


def _shared_uploads(shared: RedisShared, config: LlamaParseConfig) -> UploadThrottle:
    """The upload limit kept in Redis: it is the organization's, whatever the worker count."""
    from providers.llamaparse.uploads import SharedUploads

    return SharedUploads(
        shared.client,
        config.upload_limit,
        policy=shared.settings.policy(),
        worker_id=shared.worker_id,
    )


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

"""The composition root: config + node cache + reporter + transfer settings, built once.

Every entry point builds its `Context` here — the CLI, the console script's fast path
(registry_client.entry) and library users (registry_client.api) — so a command, a cache
hit and a Python call read the same config, open the same cache and check the same
settings, in the same order. Light on purpose: the fast path imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from registry_client.cache import Cache
from registry_client.config import Config, load_config, node_cache
from registry_client.reporting import Reporter
from registry_client.settings import TransferSettings

MiB = 1024 * 1024


@dataclass
class Context:
    """What every operation needs: where images come from, where they go, who to tell."""

    config: Config
    cache: Cache
    reporter: Reporter = field(default_factory=Reporter)
    transfer: TransferSettings = field(default_factory=TransferSettings)
    part_size: int = 64 * MiB
    push_concurrency: int = 4


def open_context(
    config: str | None = None,
    cache_dir: str | None = None,
    reporter: Reporter | None = None,
) -> Context:
    """Load the config (`config` path, else $REGISTRY_CLIENT_CONFIG, else the default),
    open the node cache (`cache_dir`, else the environment, config or default);
    ConfigError (exit 2) on anything invalid in the config."""
    loaded = load_config(config)
    cache = node_cache(loaded, cache_dir)
    settings = transfer_settings(loaded.settings.get("transfer"))
    ctx = Context(config=loaded, cache=cache, reporter=reporter or Reporter(), **settings)
    # The cache's warnings (a shared cache it cannot trust ...) reach the reporter of the day.
    for layer in (cache, cache.fallback):
        if layer is not None:
            layer.on_notice = lambda message: ctx.reporter.warn(message)
    return ctx


def transfer_settings(table: Any) -> dict[str, Any]:
    """[transfer] chunk_size, concurrency, stall_timeout, part_size, push_concurrency from
    the config (checked by config.load_config), as keyword arguments of Context."""
    if table is None:
        return {}
    default = TransferSettings()
    settings: dict[str, Any] = {
        "transfer": TransferSettings(
            chunk_size=table.get("chunk_size", default.chunk_size),
            concurrency=table.get("concurrency", default.concurrency),
            stall_timeout=float(table.get("stall_timeout", default.stall_timeout)),
        )
    }
    for key in ("part_size", "push_concurrency"):
        if key in table:
            settings[key] = table[key]
    return settings

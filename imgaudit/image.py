"""The image model shared by every source: platform, config, layer descriptors (OCI image-spec)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        parts = [self.os, self.architecture] + ([self.variant] if self.variant else [])
        return "/".join(parts)

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"platform {text!r} is not os/arch[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


@dataclass(frozen=True)
class HistoryEntry:
    created_by: str = ""
    created: str | None = None
    comment: str | None = None
    empty_layer: bool = False


@dataclass(frozen=True)
class ImageConfig:
    platform: Platform
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    diff_ids: tuple[str, ...] = ()
    history: tuple[HistoryEntry, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()

    def env_value(self, name: str) -> str | None:
        prefix = name + "="
        for item in self.env:
            if item.startswith(prefix):
                return item[len(prefix):]
        return None

    def layer_history(self) -> list[HistoryEntry]:
        """History entries that own a layer, in layer order (empty_layer ones dropped)."""
        return [h for h in self.history if not h.empty_layer]


@dataclass(frozen=True)
class Layer:
    """One layer as the manifest describes it; `open` yields its stored (maybe compressed) bytes."""

    index: int
    diff_id: str
    digest: str | None = None
    size: int | None = None
    media_type: str = ""
    created_by: str = ""
    open: Callable[[], BinaryIO] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Image:
    reference: str
    source: str
    config: ImageConfig
    config_digest: str
    layers: tuple[Layer, ...]
    manifest_digest: str | None = None
    # Parts set aside before any layer was read, as (what, why): they make the report incomplete (RELIABILITY.md
    # §2.5), e.g. a manifest "layer" of a non-layer media type (#29).
    not_analysed: tuple[tuple[str, str], ...] = ()

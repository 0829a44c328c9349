"""Which imported symbols of an object no object of a scope defines: glibc's `check_match`
(elf/dl-lookup.c) and musl's `do_relocs`, answered with sets and bitmasks instead of a walk of the
scope per symbol.

One `Bindings` serves every program of one image and one loader flavour. What an object exports and
which of another object's imports those exports bind depend only on the two files, so both are worked
out once per object (or pair) and shared by every scope the objects meet in; binding is a yes/no per
import and any provider in the scope will do, so the order of the scope does not matter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter

from imgaudit.elf import ElfFacts, Symbol

_NAME = itemgetter(0)
_HIDDEN = itemgetter(3)
_NAME_VERSION = itemgetter(0, 1)


@dataclass
class _Provider:
    """An object's exported definitions, as the sets a reference is matched against."""

    names: frozenset[str]  # every defined name
    default: frozenset[str]  # names with a default (not `name@V`) definition
    versioned: bool  # the object defines versions (DT_VERDEF)
    exports: tuple[Symbol, ...]
    _pairs: frozenset[tuple[str, str | None]] | None = None

    @classmethod
    def of(cls, facts: ElfFacts) -> _Provider:
        exports = facts.exported_symbols
        names = frozenset(map(_NAME, exports))
        hidden = any(map(_HIDDEN, exports))
        default = frozenset(s.name for s in exports if not s.hidden) if hidden else names
        return cls(names, default, bool(facts.version_defs), exports)

    def binds(self, sym: Symbol, use_versions: bool) -> bool:
        """`check_match`: a versioned reference binds only to that version in an object with versions
        (to any definition in one without); an unversioned one to a default definition. musl ignores
        versions altogether."""
        if sym.name not in self.names:
            return False
        if not use_versions:
            return True
        if sym.version is None:
            return sym.name in self.default
        if not self.versioned:
            return True
        if self._pairs is None:
            self._pairs = frozenset(map(_NAME_VERSION, self.exports))
        return (sym.name, sym.version) in self._pairs


@dataclass
class _Consumer:
    """An object's strong imports, bit i of an int standing for `symbols[i]`; `masks[provider]` =
    the bits that provider binds."""

    symbols: tuple[Symbol, ...]
    by_name: dict[str, list[int]]  # name → indexes into `symbols`
    names: frozenset[str]
    full: int
    masks: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, facts: ElfFacts) -> _Consumer:
        symbols = tuple(s for s in facts.imported_symbols if not s.weak)  # a weak reference may stay unbound
        by_name: dict[str, list[int]] = {}
        for i, sym in enumerate(symbols):
            by_name.setdefault(sym.name, []).append(i)
        return cls(symbols, by_name, frozenset(by_name), (1 << len(symbols)) - 1)

    def pick(self, bits: int) -> list[Symbol]:
        # One pass over the binary digits: testing `bits >> i & 1` per symbol is quadratic.
        digits = f"{bits:0{len(self.symbols)}b}"[::-1]  # `bits` is within `full`: no more digits than symbols
        return [sym for sym, digit in zip(self.symbols, digits, strict=True) if digit == "1"]


class Bindings:
    """Per image and loader flavour: objects are known by a key (their real path) that stands for
    their facts."""

    def __init__(self, use_versions: bool) -> None:
        self.use_versions = use_versions
        self._providers: dict[str, _Provider] = {}
        self._consumers: dict[str, _Consumer] = {}

    def unbound(self, key: str, facts: ElfFacts, scope: Sequence[tuple[str, ElfFacts]]) -> list[Symbol]:
        """The strong imports of the object `key` that no object of `scope` defines, in import order."""
        consumer = self._consumers.get(key)
        if consumer is None:
            consumer = self._consumers[key] = _Consumer.of(facts)
        left = consumer.full
        masks = consumer.masks
        fresh = []
        for other, _ in scope:
            mask = masks.get(other)
            if mask is None:
                fresh.append(other)
            else:
                left &= ~mask
        if left and fresh:
            facts_of = dict(scope)
            for other in fresh:
                mask = masks[other] = self._mask(consumer, other, facts_of[other])
                left &= ~mask
                if not left:
                    break
        return consumer.pick(left) if left else []

    def _mask(self, consumer: _Consumer, key: str, facts: ElfFacts) -> int:
        provider = self._providers.get(key)
        if provider is None:
            provider = self._providers[key] = _Provider.of(facts)
        bitmap = bytearray((len(consumer.symbols) + 7) // 8)
        symbols = consumer.symbols
        for name in consumer.names & provider.names:
            for i in consumer.by_name[name]:
                if provider.binds(symbols[i], self.use_versions):
                    bitmap[i >> 3] |= 1 << (i & 7)
        return int.from_bytes(bitmap, "little")


class Versions:
    """`_dl_check_map_versions`'s question, per image: does each loaded provider define every version an
    object needs from it? Only an object for which the answer is no needs the detailed check."""

    def __init__(self) -> None:
        self._needs: dict[str, tuple[tuple[str, frozenset[str]], ...]] = {}
        self._defs: dict[str, frozenset[str]] = {}

    def all_met(self, key: str, facts: ElfFacts, find: Callable[[str], tuple[str, ElfFacts] | None]) -> bool:
        """`find(file)`: the key and facts of the object loaded for a DT_VERNEED file, None if none
        is (a missing library, reported as such)."""
        needs = self._needs.get(key)
        if needs is None:
            grouped: dict[str, set[str]] = {}
            for need in facts.version_needs:
                grouped.setdefault(need.file, set()).add(need.version)
            needs = self._needs[key] = tuple((file, frozenset(v)) for file, v in grouped.items())
        for file, versions in needs:
            found = find(file)
            if found is None or found[1].error:
                continue
            defs = self._defs.get(found[0])
            if defs is None:
                defs = self._defs[found[0]] = frozenset(found[1].version_defs)
            if not defs or not versions <= defs:
                return False
        return True

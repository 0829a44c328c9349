"""Which imported symbols of an object no object of a scope defines: glibc's `check_match`
(elf/dl-lookup.c) and musl's `do_relocs`, answered with sets and bitmasks instead of a walk of the
scope per symbol.

One `Bindings` serves every program of one image and one loader flavour. What an object exports and
which of another object's imports those exports bind depend only on the two files, so both are worked
out once per object (or pair) and shared by every scope the objects meet in; binding is a yes/no per
import and any provider in the scope will do, so the order of the scope does not matter.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from itertools import compress
from operator import not_
from typing import TypeVar

from imgaudit.elf import ElfFacts, Symbol, Symbols

_K = TypeVar("_K")


@dataclass
class _Provider:
    """An object's exported definitions, as the sets references are matched against."""

    names: frozenset[str]  # every defined name
    default: frozenset[str]  # names with a default (not `name@V`) definition
    versioned: bool  # the object defines versions (DT_VERDEF)
    exports: Symbols
    _pairs: frozenset[tuple[str, str | None]] | None = None

    @classmethod
    def of(cls, facts: ElfFacts) -> _Provider:
        exports = facts.exported_symbols
        every = exports.names()
        names = frozenset(every)
        default = frozenset(compress(every, map(not_, exports.hidden()))) if exports.any_hidden() else names
        return cls(names, default, bool(facts.version_defs), exports)

    @property
    def pairs(self) -> frozenset[tuple[str, str | None]]:
        """(name, version) of every definition, hidden ones included."""
        if self._pairs is None:
            self._pairs = frozenset(zip(self.exports.names(), self.exports.versions(), strict=True))
        return self._pairs


@dataclass
class _Consumer:
    """An object's strong imports, bit i of an int standing for `imports[strong[i]]`; `masks[provider]` =
    the bits that provider binds. The indexes map what a definition must match to the bits of the
    imports it binds (ints, not lists: these live as long as the image, and the garbage collector
    does not walk ints)."""

    imports: Symbols
    strong: tuple[int, ...]  # bit i stands for imports[strong[i]]
    plain: dict[str, int]  # unversioned imports
    by_version: dict[tuple[str, str | None], int]  # versioned imports, by (name, version)
    full: int
    masks: dict[str, int] = field(default_factory=dict)  # every provider matched so far
    useful: dict[str, int] = field(default_factory=dict)  # those that bind something
    _versioned_names: dict[str, int] | None = None
    _by_name: dict[str, int] | None = None

    @classmethod
    def of(cls, facts: ElfFacts) -> _Consumer:
        imports = facts.imported_symbols
        strong = tuple(compress(range(len(imports)), map(not_, imports.weak)))  # a weak one may stay unbound
        names, versions = imports.names(), imports.versions()
        plain: dict[str, int] = {}
        by_version: dict[tuple[str, str | None], int] = {}
        for bit, at in enumerate(strong):
            name, version = names[at], versions[at]
            if version is None:
                plain[name] = plain.get(name, 0) | 1 << bit
            else:
                by_version[name, version] = by_version.get((name, version), 0) | 1 << bit
        return cls(imports, strong, plain, by_version, (1 << len(strong)) - 1)

    @property
    def versioned_names(self) -> dict[str, int]:
        """Versioned imports by name, for a provider without versions (any definition binds)."""
        if self._versioned_names is None:
            self._versioned_names = {}
            for (name, _), bits in self.by_version.items():
                self._versioned_names[name] = self._versioned_names.get(name, 0) | bits
        return self._versioned_names

    @property
    def by_name(self) -> dict[str, int]:
        """Every import by name, for musl."""
        if self._by_name is None:
            self._by_name = dict(self.plain)
            for name, bits in self.versioned_names.items():
                self._by_name[name] = self._by_name.get(name, 0) | bits
        return self._by_name

    def bound_by(self, provider: _Provider, use_versions: bool) -> int:
        """glibc's `check_match`: a versioned reference binds only to that version in an object with
        versions (to any definition of the name in one without); an unversioned one to a default
        definition. musl ignores versions altogether."""
        mask = 0
        if not use_versions:
            by_name = self.by_name
            for name in _common(by_name, provider.names):
                mask |= by_name[name]
            return mask
        for name in _common(self.plain, provider.default):
            mask |= self.plain[name]
        if self.by_version and provider.versioned:
            for pair in _common(self.by_version, provider.pairs):
                mask |= self.by_version[pair]
        elif self.by_version:
            versioned_names = self.versioned_names
            for name in _common(versioned_names, provider.names):
                mask |= versioned_names[name]
        return mask

    def pick(self, bits: int) -> list[Symbol]:
        # One pass over the binary digits: testing `bits >> i & 1` per symbol is quadratic.
        digits = f"{bits:0{len(self.strong)}b}"[::-1]  # `bits` is within `full`: no more digits than symbols
        symbols = list(self.imports)
        return [symbols[at] for at, digit in zip(self.strong, digits, strict=True) if digit == "1"]


def _common(index: dict[_K, int], keys: frozenset[_K]) -> AbstractSet[_K]:
    """The keys of `index` in `keys`, walking the smaller of the two (`frozenset.intersection(dict)`
    walks the dict, `dict.keys() & frozenset` the frozenset)."""
    return index.keys() & keys if len(keys) < len(index) else keys.intersection(index)


class Bindings:
    """Per image and loader flavour: objects are known by a key (their real path) that stands for
    their facts."""

    def __init__(self, use_versions: bool) -> None:
        self.use_versions = use_versions
        self._providers: dict[str, _Provider] = {}
        self._consumers: dict[str, _Consumer] = {}

    def unbound(self, key: str, facts: ElfFacts, scope: Mapping[str, ElfFacts],
                needed: Collection[str] = ()) -> list[Symbol]:
        """The strong imports of the object `key` that no object of `scope` (key → facts) defines, in
        import order. `needed`: the objects its DT_NEEDED entries loaded, the likely providers."""
        consumer = self._consumers.get(key)
        if consumer is None:
            consumer = self._consumers[key] = _Consumer.of(facts)
        left = consumer.full
        # The providers that bound something before usually bind everything again.
        for other, mask in consumer.useful.items():
            if other in scope:
                left &= ~mask
                if not left:
                    return []
        masks = consumer.masks
        fresh = sorted((other for other in scope if other not in masks), key=lambda other: other not in needed)
        for other in fresh:
            if not left:
                return []
            mask = masks[other] = self._mask(consumer, other, scope[other])
            if mask:
                consumer.useful[other] = mask
                left &= ~mask
        return consumer.pick(left) if left else []

    def _mask(self, consumer: _Consumer, key: str, facts: ElfFacts) -> int:
        provider = self._providers.get(key)
        if provider is None:
            provider = self._providers[key] = _Provider.of(facts)
        return consumer.bound_by(provider, self.use_versions)


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

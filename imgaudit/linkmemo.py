"""Resolutions remembered across runs, so that an image differing from one seen before in its top layer
does not pay again for the linkage of every binary below it (issue 7).

A binary's resolution is a function of its own bytes, of what its loader read of the image once (search
path, ld.so.cache, the image's Env: `Loader.state()`), and of the answers the walk got from the
filesystem: the outcome and real file of every candidate path a search tried, the real file of the
interpreter, and the bytes of every object it loaded. A memo records those answers with the outcome; a
later run reuses it only when asking the same questions of the new image gives the same answers, so a
memo stays right whatever changed elsewhere in the image. What a memo saves is the walk and the symbol
checks; the findings and their fixes are made fresh from the outcome.

Memos live beside the layer scans (cache.py), one file per layer digest holding the binaries whose final
version that layer wrote, so every image sharing the layer finds them. A resolution that met a file
without a digest or without readable ELF facts (sparse, over the parse cap, a parser timeout) is not
remembered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from imgaudit.cache import ScanCache
from imgaudit.loader import Loader, LoaderEnv, Outcome, Problem, Resolution, real_file, resolve
from imgaudit.rootfs import Node, RootFS

VARIANTS = 4  # memos kept per binary (different libraries or loader state around it), most recently used first
_INTERP = "interpreter"  # the probe of PT_INTERP, answered by real_file rather than a loader's check

Key = tuple[str, str, bool]  # (path, content digest, as a library)
Probe = tuple[str, str, str | None]  # (path, outcome, real path)
# (loader context, probes, objects as (real path, digest), the outcome as plain tuples)
Memo = tuple[str, tuple[Probe, ...], tuple[tuple[str, str], ...], tuple[object, ...]]


class Memos:
    """The memos of one image's layers: read per layer when first asked, written back by `save`."""

    def __init__(self, cache: ScanCache, layers: Sequence[str | None]) -> None:
        self.cache = cache
        self.layers = layers
        self._by_layer: dict[int, dict[Key, list[Memo]]] = {}
        self._changed: set[int] = set()
        self._contexts: dict[int, str] = {}
        self.hits = self.misses = 0

    def resolve(self, rootfs: RootFS, node: Node, env: LoaderEnv, loader: Loader,
                as_library: bool) -> Outcome | None:
        """`loader.resolve(...).outcome()` for the binary at `node`, from a memo whose answers still hold."""
        digest, layer = node.entry.digest, node.layer
        if digest is None or not 0 <= layer < len(self.layers) or self.layers[layer] is None:
            return fresh(rootfs, node, env, loader, as_library)
        key: Key = (node.path, digest, as_library)
        context = self._context(loader)
        memos = self._memos(layer)
        known = memos.get(key, [])
        for i, memo in enumerate(known):
            try:
                if memo[0] == context and _holds(memo, rootfs, loader):
                    self.hits += 1
                    if i:  # most recently used first, so the cap drops the variant unused longest
                        memos[key] = [memo, *known[:i], *known[i + 1:]]
                        self._changed.add(layer)
                    return _unplain(memo[3])
            except (TypeError, ValueError, IndexError):  # the right digest but not our shape: trust none
                break
        self.misses += 1
        trace: list[str] = []
        res = resolve(rootfs, node.path, env, loader=loader, as_library=as_library, trace=trace)
        if res is None:
            return None
        outcome = res.outcome()
        answers = _answers(res, trace, rootfs, loader)
        if answers is not None:
            memos[key] = [(context, *answers, _plain(outcome)), *known][:VARIANTS]
            self._changed.add(layer)
        return outcome

    def save(self) -> None:
        for layer in sorted(self._changed):
            digest = self.layers[layer]
            if digest is not None:
                self.cache.put_links(digest, self._by_layer[layer])
        self._changed.clear()

    def _memos(self, layer: int) -> dict[Key, list[Memo]]:
        memos = self._by_layer.get(layer)
        if memos is None:
            digest = self.layers[layer]
            memos = self._by_layer[layer] = (self.cache.get_links(digest) if digest else None) or {}
        return memos

    def _context(self, loader: Loader) -> str:
        context = self._contexts.get(id(loader))
        if context is None:  # loaders live as long as the analysis, so their ids are not reused meanwhile
            context = self._contexts[id(loader)] = hashlib.sha256(loader.state().encode()).hexdigest()[:32]
        return context


def fresh(rootfs: RootFS, node: Node, env: LoaderEnv, loader: Loader, as_library: bool) -> Outcome | None:
    """The outcome of resolving the binary at `node` now, with no memo read or written."""
    res = resolve(rootfs, node.path, env, loader=loader, as_library=as_library)
    return res.outcome() if res is not None else None


def _answers(res: Resolution, trace: list[str], rootfs: RootFS,
             loader: Loader) -> tuple[tuple[Probe, ...], tuple[tuple[str, str], ...]] | None:
    """The probes (path → outcome, real) and the objects (real → digest) the walk depended on; None when a
    file it met has no digest or no facts to stand for its bytes."""
    probes: dict[str, Probe] = {path: (path, *loader.check(path)) for path in trace}
    reals = [obj.real_path for obj in res.objects]
    if res.interpreter is not None:
        interp = real_file(rootfs, res.interpreter)
        probes[_INTERP] = (res.interpreter, _INTERP, interp)
        reals.append(interp)
    objects: dict[str, str] = {}
    for real in reals:
        node = rootfs.nodes.get(real) if real is not None else None
        if real is None or node is None or node.entry.digest is None or node.entry.elf is None or node.entry.elf.error:
            return None
        objects[real] = node.entry.digest
    return tuple(probes.values()), tuple(objects.items())


def _holds(memo: Memo, rootfs: RootFS, loader: Loader) -> bool:
    """Asks the memo's questions of this image; True when every answer is the one recorded."""
    _, probes, objects, _ = memo
    check = loader.check
    for path, outcome, real in probes:
        if outcome == _INTERP:
            if real_file(rootfs, path) != real:
                return False
        elif check(path) != (outcome, real):
            return False
    nodes = rootfs.nodes
    for real, digest in objects:
        node = nodes.get(real)
        if node is None or node.entry.digest != digest or node.entry.elf is None or node.entry.elf.error:
            return False
    return True


def _plain(outcome: Outcome) -> tuple[object, ...]:
    """An outcome as plain tuples (cache files are `marshal`: no code runs when they are read)."""
    fatal = outcome.fatal
    plain_fatal = None if fatal is None else (fatal.kind, fatal.fatal, fatal.object, fatal.message, fatal.library,
                                              fatal.version, fatal.symbol)
    return outcome.flavour, outcome.resolved, plain_fatal


def _unplain(plain: tuple[object, ...]) -> Outcome:
    flavour, resolved, fatal = plain
    return Outcome(flavour, resolved, Problem(*fatal) if fatal is not None else None)  # type: ignore[arg-type,misc]

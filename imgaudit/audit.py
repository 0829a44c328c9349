"""The library facade: `load()` reads an image once; `audit()` runs every analyser and returns a `Report`."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from imgaudit.cache import ScanCache, report_key
from imgaudit.errors import ImgauditError
from imgaudit.image import Image, Platform
from imgaudit.layers import ElfReader, LayerScan
from imgaudit.progress import ProgressFn
from imgaudit.reference import parse_reference
from imgaudit.report import ImageInfo, Incomplete, PlatformInfo, Report
from imgaudit.rootfs import RootFS
from imgaudit.scanner import ImageResolved, Scanner
from imgaudit.sources import load_image
from imgaudit.sources.auth import RegistryOptions


@dataclass(frozen=True)
class Options:
    platform: Platform | None = None
    jobs: int = 1
    elf: bool = True
    cache: bool = True  # the per-layer scan cache (imgaudit/cache.py); IMGAUDIT_CACHE=off also disables it
    source: str | None = None  # "daemon" or "registry" for a bare NAME (--from); None: the daemon if it has it
    registry: RegistryOptions | None = None  # credentials override and TLS trust for registry pulls
    progress: ProgressFn | None = None  # told of every stored byte read (the CLI's terminal progress)
    # Keep the ELF parser processes once the layers are read: reading image after image then spares starting
    # one (`import lief`, ~0.5 s) per image. By default they stop before the filesystem is merged.
    keep_parsers: bool = False


@dataclass(frozen=True)
class Loaded:
    """An image read once: its model, one scan per layer, and the merged filesystem."""

    image: Image
    scans: tuple[LayerScan, ...]
    rootfs: RootFS
    cache: ScanCache | None = None  # where the scans came from; analysers may remember results there too


def load(reference: str, options: Options | None = None) -> Loaded:
    options = options or Options()
    ref = parse_reference(reference)
    cache = ScanCache.default() if options.cache else None
    scanner = Scanner(elf_reader=_elf_reader() if options.elf else None, jobs=options.jobs,
                      cache=cache, progress=options.progress,
                      trust_digests=ref.transport == "registry" and not ref.bare)
    try:
        image, scans = load_image(ref, platform=options.platform, scanner=scanner, source=options.source,
                                  registry=options.registry)
    finally:
        close = getattr(options.progress, "close", None)
        if close is not None:
            close()
        if not options.keep_parsers:
            _release_parsers()
    with settled_heap():
        return Loaded(image, scans, RootFS.build(scans), cache)


@contextmanager
def settled_heap() -> Iterator[None]:
    """Keeps the objects alive on entry out of the cyclic GC until exit. A loaded image is ~1 million long-lived
    objects that are never garbage, and each full collection walks them all (~0.3 s on the benchmark image),
    triggered again whenever the analysers' own objects pile up. Skipped if the caller froze objects itself
    (say before forking): unfreezing theirs is not ours to do."""
    if gc.get_freeze_count() or not gc.isenabled():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _elf_reader() -> ElfReader:
    from imgaudit.elf import read_elf

    return read_elf


def audit(reference: str | Loaded, options: Options | None = None) -> Report:
    cache = ScanCache.default() if (options or Options()).cache and isinstance(reference, str) else None
    if cache is not None and isinstance(reference, str):
        hit = _cached_report(reference, options or Options(), cache)
        if hit is not None:
            return hit
    loaded = reference if isinstance(reference, Loaded) else load(reference, options)
    report = Report(image=image_info(loaded.image))
    report.incomplete.extend(incomplete(loaded))
    with settled_heap():
        for analyse in _analysers():
            analyse(loaded, report)
    if cache is not None:
        cache.put_report(report_key(loaded.image), report)
    return report


def _release_parsers() -> None:
    """Stops the idle ELF parser processes once an image's layers are read: nothing after the scan parses an ELF
    file, and an idle parser holds ~55 MB of its own (`import lief`) through the merge and the analysis, where
    an image of small ELF files peaks (issue 7)."""
    if "imgaudit.elf" in sys.modules:  # a listing or a cached report never started one
        from imgaudit.elf import close

        close()


_RANDOM_ACCESS = frozenset({"docker-archive", "oci", "oci-archive", "registry"})


def _cached_report(reference: str, options: Options, cache: ScanCache) -> Report | None:
    """The report of an image analysed before, found from its manifest and config (a random-access source;
    a stream source is read in full as usual) once every layer blob still hashes to its digest. Only the
    reference and source are refreshed."""
    ref = parse_reference(reference)
    if ref.bare or ref.transport not in _RANDOM_ACCESS:
        return None  # a daemon's save stream would be started only to be dropped
    probe = Scanner(probe=True, jobs=max(2, options.jobs), cache=cache, trust_digests=ref.transport == "registry")
    try:
        load_image(ref, platform=options.platform, scanner=probe, source=options.source,
                   registry=options.registry)
    except ImageResolved as resolved:
        image = resolved.image
    except ImgauditError:
        return None  # the full load says what is wrong, with its own wording
    else:
        return None
    report = cache.get_report(report_key(image)) if image is not None else None
    if not isinstance(report, Report) or image is None:
        return None
    try:
        intact = probe.blobs_intact(image)
    except (ImgauditError, OSError):
        return None
    if not intact:
        return None  # the full load names the layer whose blob changed
    report.image = image_info(image)
    return report


def _analysers() -> list[Callable[[Loaded, Report], None]]:
    """Each analyser fills its part of the report; imported lazily so `ls` never pays for them."""
    from imgaudit.checks import capabilities, linkage, mount, size

    return [size.analyse, linkage.analyse, capabilities.analyse, mount.analyse]  # capabilities fills linkage's binaries


def image_info(image: Image) -> ImageInfo:
    cfg = image.config
    plat = cfg.platform
    return ImageInfo(
        reference=image.reference,
        source=image.source,
        manifest_digest=image.manifest_digest,
        config_digest=image.config_digest,
        platform=PlatformInfo(plat.os, plat.architecture, plat.variant),
        entrypoint=list(cfg.entrypoint or ()),
        cmd=list(cfg.cmd or ()),
        env=list(cfg.env),
        working_dir=cfg.working_dir,
        user=cfg.user,
    )


def incomplete(loaded: Loaded) -> list[Incomplete]:
    out = [Incomplete(s.what, s.reason) for scan in loaded.scans for s in scan.skipped]
    out += [Incomplete(s.what, s.reason) for s in loaded.rootfs.skipped]
    out += [Incomplete(what, why) for what, why in loaded.image.not_analysed]
    return out

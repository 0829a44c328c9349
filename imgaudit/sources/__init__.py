"""Sources: one module per transport, each with the same `load(ref, *, platform, scanner)` returning the
`Image` and one verified `LayerScan` per layer (random-access sources scan through `Scanner.scan_image`,
streams scan each layer as it passes)."""

from __future__ import annotations

import importlib
from dataclasses import replace

from imgaudit.errors import ImageNotFound, SourceUnavailable, UsageError
from imgaudit.image import Image, Platform
from imgaudit.layers import LayerScan
from imgaudit.reference import Reference
from imgaudit.scanner import Scanner
from imgaudit.sources.auth import RegistryOptions

# transport → module; imported on use so the docker SDK is loaded only for the daemon.
MODULES = {
    "docker-archive": "imgaudit.sources.archive",
    "oci": "imgaudit.sources.oci",
    "oci-archive": "imgaudit.sources.oci",
    "docker-daemon": "imgaudit.sources.daemon",
    "registry": "imgaudit.sources.registry",
}


def load_image(ref: Reference, *, platform: Platform | None, scanner: Scanner, source: str | None = None,
               registry: RegistryOptions | None = None) -> tuple[Image, tuple[LayerScan, ...]]:
    """Reads the image `ref` names: its model and one scan per layer, in layer order. A bare NAME is the
    daemon's image when the daemon is reachable and has it, else the registry's; `source` (--from) forces one."""
    ref, why_not_daemon = _choose_source(ref, source)
    module_name = MODULES.get(ref.transport)
    if module_name is None:
        raise UsageError(f"unknown transport {ref.transport!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise UsageError(f"{ref.display}: the {ref.transport} transport is not implemented yet") from err
    extra = {"registry": registry} if ref.transport == "registry" else {}
    try:
        image, scans = module.load(ref, platform=platform, scanner=scanner, **extra)
    except (ImageNotFound, SourceUnavailable) as err:
        if why_not_daemon is None:
            raise
        raise type(err)(f"{err} ({why_not_daemon})") from err
    return image, scans


def _choose_source(ref: Reference, source: str | None) -> tuple[Reference, str | None]:
    """(the reference to load, why a bare name is not the daemon's when it fell back to the registry)."""
    if not ref.bare:
        wanted = {"daemon": "docker-daemon", "registry": "registry"}.get(source or "", ref.transport)
        if wanted != ref.transport:
            raise UsageError(f"--from {source} applies to a bare image name, not to {ref.display}")
        return ref, None
    if source == "daemon":
        return ref, None
    if source == "registry":
        return replace(ref, transport="registry"), None
    why = _daemon_lacks(ref)
    return (ref, None) if why is None else (replace(ref, transport="registry"), why)


def _daemon_lacks(ref: Reference) -> str | None:
    """None when the local daemon has the image; else why not, for the message if the registry fails too."""
    from imgaudit.sources import daemon

    try:
        client = daemon.connect()
    except SourceUnavailable:
        return f"no Docker daemon answered at {daemon.daemon_url()} either"
    try:
        daemon.find_image(client, ref)
    except ImageNotFound:
        return "the local Docker daemon does not have it either"
    except SourceUnavailable:
        return f"no Docker daemon answered at {daemon.daemon_url()} either"
    finally:
        client.close()
    return None

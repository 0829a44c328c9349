"""Sources: one module per transport, each with the same `load(ref, *, platform, scanner)` returning the
`Image` and one verified `LayerScan` per layer (random-access sources scan through `Scanner.scan_image`,
streams scan each layer as it passes)."""

from __future__ import annotations

import importlib

from imgaudit.errors import UsageError
from imgaudit.image import Image, Platform
from imgaudit.layers import LayerScan
from imgaudit.reference import Reference
from imgaudit.scanner import Scanner

# transport → module; imported on use so the docker SDK is loaded only for the daemon.
MODULES = {
    "docker-archive": "imgaudit.sources.archive",
    "oci": "imgaudit.sources.oci",
    "oci-archive": "imgaudit.sources.oci",
    "docker-daemon": "imgaudit.sources.daemon",
    "registry": "imgaudit.sources.registry",
}


def load_image(ref: Reference, *, platform: Platform | None, scanner: Scanner) -> tuple[Image, tuple[LayerScan, ...]]:
    """Reads the image `ref` names: its model and one scan per layer, in layer order."""
    module_name = MODULES.get(ref.transport)
    if module_name is None:
        raise UsageError(f"unknown transport {ref.transport!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise UsageError(f"{ref.display}: the {ref.transport} transport is not implemented yet") from err
    image, scans = module.load(ref, platform=platform, scanner=scanner)
    return image, scans

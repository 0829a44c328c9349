"""What a cache entry must be, for the tests that kill, starve or fill the cache (test_nothing_lost,
test_cache_disk): whole and verified by its kind, whatever happened to the run that wrote it."""

from __future__ import annotations

import pytest

from imgaudit import cache


def verify_entry(name: str, blob: bytes) -> None:
    """Fails unless `blob` is a whole entry of the kind its file name says (a torn one fails its sha256); a
    scan must also be of the layer its name gives."""
    if name.endswith(cache.SUFFIX):
        scan = cache.decode(blob)
        assert scan.digest == "sha256:" + name.split(".", 1)[0].split("-", 1)[1], name
    elif name.endswith(cache.REPORT_SUFFIX):
        cache._verified(blob, cache.REPORT_MAGIC)
    elif name.endswith(cache.HASHED_SUFFIX):  # a blob's remembered hash (test_blob_identity.py)
        cache._hash_record(blob)
    elif name.endswith(cache.LINKS_SUFFIX):  # linkage memos (linkmemo.py)
        cache._verified(blob, cache.LINKS_MAGIC)
    else:
        pytest.fail(f"unexpected file in the cache: {name}")

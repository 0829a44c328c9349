"""`/etc/ld.so.conf` as `ldconfig` reads it (glibc `elf/ldconfig.c` `parse_conf`): one directory per line
(`,`, `:`, tabs and spaces also separate), `#` comments, `include GLOB` (relative to the including
file), `hwcap` lines ignored. Read from the image only; includes are cycle-safe.

`ld.so` itself never reads these files: they only tell which directories `ldconfig` would have put
into `/etc/ld.so.cache`, which is how imgaudit spots a stale cache.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re

from imgaudit.rootfs import RootFS, SymlinkLoop

CONF = "/etc/ld.so.conf"
MAX_FILES = 256
_SEPARATORS = re.compile(r"[\s,:]+")


def conf_dirs(rootfs: RootFS, path: str = CONF) -> list[str]:
    """Directories listed by `path` and its includes, in order, without duplicates."""
    dirs: list[str] = []
    _parse(rootfs, path, dirs, set())
    return list(dict.fromkeys(dirs))


def _parse(rootfs: RootFS, path: str, dirs: list[str], seen: set[str]) -> None:
    real = _resolve(rootfs, path) if path.startswith("/") else None
    if real is None or real in seen or len(seen) >= MAX_FILES:
        return
    seen.add(real)
    data = rootfs.read(real)
    if data is None:
        return
    for raw in data.decode("utf-8", "replace").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("include") and line[7:8] in (" ", "\t"):
            for pattern in line[8:].split():
                for inc in _glob(rootfs, _relative_to(path, pattern)):
                    _parse(rootfs, inc, dirs, seen)
        elif line and not line.startswith("hwcap"):
            dirs.extend(_clean(d) for d in _SEPARATORS.split(line) if d.startswith("/"))


def _relative_to(conf: str, pattern: str) -> str:
    # ldconfig: "If the include path is relative, it is relative to the directory of the conf file".
    return pattern if pattern.startswith("/") else posixpath.join(posixpath.dirname(conf), pattern)


def _glob(rootfs: RootFS, pattern: str) -> list[str]:
    """glob(3) of the last component only (what distributions use: `/etc/ld.so.conf.d/*.conf`),
    sorted like glob's default."""
    directory, base = posixpath.split(pattern)
    real_dir = _resolve(rootfs, directory)
    if real_dir is None:
        return []
    if not any(ch in base for ch in "*?["):
        return [pattern]
    names = [n for n in rootfs.listdir(real_dir) if fnmatch.fnmatchcase(n, base) and not n.startswith(".")]
    return [posixpath.join(directory, n) for n in sorted(names)]


def _resolve(rootfs: RootFS, path: str) -> str | None:
    """A symlink loop is a file ldconfig cannot open (ELOOP): skipped, like a missing one."""
    try:
        return rootfs.resolve(path)
    except SymlinkLoop:
        return None


def _clean(directory: str) -> str:
    return directory.rstrip("/") or "/"

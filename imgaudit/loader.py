"""Emulation of glibc's `ld.so` and musl's loader against an image's `RootFS` and the image's own Env
(never the host's files or environment) → `Resolution`: the load order, each DT_NEEDED edge with the
path it resolved to and the search step that found it, and the problems the loader would report.

glibc: `elf/dl-load.c` (`_dl_map_object`, `open_path`, `open_verify`, `fillin_rpath`), `elf/dl-deps.c`
(breadth-first `_dl_map_object_deps`), `elf/dl-version.c` (`match_symbol`), `elf/dl-lookup.c`
(`check_match`). musl: `ldso/dynlink.c` (`load_library`, `load_deps`, `fixup_rpath`, `path_open`,
`do_relocs`). Where glibc depends on the running CPU (glibc-hwcaps subdirectories) the baseline is
assumed.
"""

from __future__ import annotations

import functools
import posixpath
import re
import struct
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

from imgaudit import ldcache
from imgaudit.elf import ElfFacts, Symbol
from imgaudit.layers import EntryType
from imgaudit.rootfs import RootFS, SymlinkLoop
from imgaudit.symbind import Bindings, Versions

# (machine, ELF class) → Debian multiarch triplet, the dirs `ld.so` searches after the cache there.
TRIPLETS = {
    ("x86_64", 64): "x86_64-linux-gnu", ("aarch64", 64): "aarch64-linux-gnu", ("i386", 32): "i386-linux-gnu",
    ("arm", 32): "arm-linux-gnueabihf", ("ppc64le", 64): "powerpc64le-linux-gnu",
    ("s390x", 64): "s390x-linux-gnu", ("riscv64", 64): "riscv64-linux-gnu",
}
# musl's LDSO_ARCH (arch/*/reloc.h) for the `/etc/ld-musl-ARCH.path` file name.
MUSL_ARCH = {"x86_64": "x86_64", "aarch64": "aarch64", "i386": "i386", "arm": "armhf", "ppc64le": "powerpc64le",
             "s390x": "s390x", "riscv64": "riscv64"}
# musl `load_library`: names it is itself ("lib" + one of these + "."), whatever the suffix.
MUSL_RESERVED = ("c", "pthread", "rt", "m", "dl", "util", "xnet")
MUSL_DEFAULT_PATH = "/lib:/usr/local/lib:/usr/lib"
LD_PRELOAD, PRELOAD_FILE = "LD_PRELOAD", "/etc/ld.so.preload"
_PRELOAD_SEPARATORS = " \t\n:"
MAX_PRELOADS = 1024  # preloads a walk maps; more are said to be left out (the report is then not complete)
PATH_MAX = 4096  # rtld.c copies each LD_PRELOAD name into a buffer of this size; a longer one is skipped
_DST = re.compile(r"\$(?:\{(ORIGIN|LIB|PLATFORM)\}|(ORIGIN|LIB|PLATFORM)(?![A-Za-z0-9_]))")
_EM = {62: "x86_64", 183: "aarch64", 3: "i386", 40: "arm", 21: "ppc64", 22: "s390", 243: "riscv"}


class Step(str, Enum):
    """Which search step found a library (the `via` column of `imgaudit ldd`)."""

    PATH = "path"  # DT_NEEDED containing a slash: opened as written
    LOADED = "already loaded"
    INTERPRETER = "interpreter"  # glibc: ld.so is in the namespace from the start
    RPATH = "rpath"
    LD_LIBRARY_PATH = "LD_LIBRARY_PATH"
    RUNPATH = "runpath"
    LD_CACHE = "ld.so.cache"
    DEFAULT = "default dirs"
    MUSL_LIBC = "musl libc"  # one of musl's reserved names: the loader itself
    MUSL_PATH_FILE = "musl path file"
    MUSL_DEFAULT = "musl default dirs"


@dataclass(frozen=True, slots=True)
class Candidate:
    """One file the loader tried: `outcome` is ok, missing, directory, too-short, wrong-class, wrong-machine or
    not-elf."""

    path: str
    step: Step
    outcome: str


class Link(NamedTuple):
    """One DT_NEEDED edge: `path` is the name the loader gives the object (`l_name`), None if not found.

    A NamedTuple like elf.Symbol, not a frozen dataclass: an image's resolutions make ~60k of them, and
    a frozen dataclass builds ~4x slower."""

    name: str
    needed_by: str
    path: str | None
    real_path: str | None
    step: Step | None
    reason: str | None = None
    tried: tuple[Candidate, ...] = ()
    new: bool = True  # False when an object loaded earlier was reused


@dataclass
class LoadedObject:
    name: str
    real_path: str | None
    facts: ElfFacts | None
    depth: int
    needed_by: str | None = None
    names: set[str] = field(default_factory=set)
    links: list[Link] = field(default_factory=list)

    @property
    def soname(self) -> str | None:
        return self.facts.soname if self.facts else None


@dataclass(frozen=True, slots=True)
class Problem:
    """What the loader would complain about. `kind` is a failure category of the report (or
    `no-version-info` / `weak-version` / `unknown` for warnings); `fatal` means start-up dies."""

    kind: str
    fatal: bool
    object: str
    message: str
    library: str | None = None
    version: str | None = None
    symbol: str | None = None


@dataclass(frozen=True)
class LoaderEnv:
    """What the loader reads from the process: the image's Env and working dir, nothing of the host."""

    library_path: str | None = None
    bind_now: bool = False
    cwd: str = "/"
    preload: str | None = None  # LD_PRELOAD

    @classmethod
    def from_env(cls, env: Iterable[str], cwd: str = "") -> LoaderEnv:
        values = dict(item.split("=", 1) for item in env if "=" in item)
        return cls(values.get("LD_LIBRARY_PATH"), bool(values.get("LD_BIND_NOW")), cwd or "/", values.get("LD_PRELOAD"))


@dataclass(frozen=True)
class Resolution:
    program: str
    flavour: str  # "glibc" or "musl"
    interpreter: str | None
    objects: tuple[LoadedObject, ...]
    links: tuple[Link, ...]
    problems: tuple[Problem, ...]
    search: tuple[tuple[str, str], ...] = ()  # (step, dirs) as `ld.so --help` would list them

    @property
    def fatal(self) -> Problem | None:
        return next((p for p in self.problems if p.fatal), None)

    def resolved(self) -> dict[str, str | None]:
        """soname → path for the report's `binaries[].resolved` (first resolution of each name)."""
        out: dict[str, str | None] = {}
        for link in self.links:
            out.setdefault(link.name, link.path)
        return out

    def missing(self) -> list[Link]:
        return [link for link in self.links if link.path is None]

    def outcome(self) -> Outcome:
        return Outcome(self.flavour, tuple(self.resolved().items()), self.fatal)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a report keeps of a resolution: all `linkmemo` has to remember of one across runs."""

    flavour: str
    resolved: tuple[tuple[str, str | None], ...]  # `Resolution.resolved()`, in order
    fatal: Problem | None


# ------------------------------------------------------------------------------------------------
# Shared file checks.


def ident(head: bytes) -> tuple[int, str] | None:
    """(ELF class, machine) from the first bytes, or None when not an ELF file."""
    if len(head) < 20 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
        return None
    (e_machine,) = struct.unpack_from("<H" if head[5] == 1 else ">H", head, 18)
    elf_class = 32 * head[4]
    name = _EM.get(e_machine, f"em_{e_machine}")
    if name == "ppc64":
        name = "ppc64le" if head[5] == 1 else "ppc64"
    elif name in ("s390", "riscv"):
        name = f"{name}{'x' if name == 's390' and elf_class == 64 else elf_class if name == 'riscv' else ''}"
    return elf_class, name


def real_file(rootfs: RootFS, path: str) -> str | None:
    """Real path of a regular file at `path` (symlinks followed inside the root), else None."""
    try:
        real = rootfs.resolve(path)
    except SymlinkLoop:
        return None
    if real is None:
        return None
    node = rootfs.nodes.get(real)
    return real if node is not None and node.type in (EntryType.FILE, EntryType.HARDLINK) else None


def facts_of(rootfs: RootFS, real: str) -> ElfFacts | None:
    node = rootfs.nodes.get(real)
    return node.entry.elf if node is not None else None


def _check(rootfs: RootFS, path: str, want: tuple[int, str]) -> tuple[str, str | None]:
    """`open_verify`: (outcome, real path). Wrong class or machine is skipped, not fatal. A directory opens (and
    then cannot be read); a file shorter than an ELF header of the loader's class is too short for either loader."""
    real = real_file(rootfs, path)
    if real is None:
        try:
            where = rootfs.resolve(path)
        except SymlinkLoop:
            return "missing", None
        node = rootfs.nodes.get(where) if where else None
        return ("directory", where) if node is not None and node.is_dir else ("missing", None)
    entry = rootfs.nodes[real].entry
    if entry.size < (64 if want[0] == 64 else 52):
        return "too-short", real
    got = ident(entry.head)
    if got is None:
        return "not-elf", real
    if got[0] != want[0]:
        return "wrong-class", real
    return ("ok" if got[1] == want[1] else "wrong-machine"), real


class _Checks:
    """`_check` of one loader, remembered by path: the root does not change while it is analysed, and
    the same candidate paths come up for program after program."""

    def __init__(self, rootfs: RootFS, want: tuple[int, str]) -> None:
        self.rootfs = rootfs
        self.want = want
        self._done: dict[str, tuple[str, str | None]] = {}

    def __call__(self, path: str) -> tuple[str, str | None]:
        done = self._done.get(path)
        if done is None:
            done = self._done[path] = _check(self.rootfs, path, self.want)
        return done


def _split_dirs(value: str, seps: str) -> list[str]:
    out = [value]
    for sep in seps:
        out = [part for chunk in out for part in chunk.split(sep)]
    return out


@functools.cache  # a few dozen GLIBC_2.x versions, compared for every binary of an image
def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isascii() and p.isdigit() else -1 for p in version.replace("-", ".").split("."))


def glibc_required(facts: ElfFacts) -> str | None:
    """The highest GLIBC_2.x version the object needs (report `glibc_required`)."""
    versions = [n.version[6:] for n in facts.version_needs if n.version.startswith("GLIBC_2")]
    return max(versions, key=_version_key, default=None)


# ------------------------------------------------------------------------------------------------
# glibc ld.so


# open_verify's error strings (fatal); ld.so's own strerror knows no text for EISDIR, so it prints the number
_EISDIR = ": Error 21"
_UNUSABLE = {"not-elf": "invalid ELF header", "too-short": "file too short",
             "directory": "cannot read file data" + _EISDIR}


@dataclass
class _Search:
    name: str
    tried: list[Candidate] = field(default_factory=list)
    other_class: bool = False
    found: tuple[str, str, Step] | None = None  # (l_name, real path, step)
    bad: tuple[str, str] | None = None  # (path, errstring) of a fatal open_verify error


# The dirs a search tries before its fixed last steps, each with the step that tries them.
_Plan = tuple[tuple[Step, tuple[str, ...]], ...]


def _follow(name: str, plan: _Plan, attempt: Callable[[_Search, Sequence[str], Step, str], bool]
            ) -> tuple[_Search, bool]:
    """Tries a plan's steps in order (a name with a slash: its own path only); True once one decided.
    What comes after the plan (ld.so.cache and the default dirs, or musl's path file) is the loader's."""
    s = _Search(name)
    if "/" in name:
        attempt(s, plan[0][1], Step.PATH, "")
        return s, True
    return s, any(attempt(s, dirs, step, name) for step, dirs in plan)


class GlibcLoader:
    """One `ld.so` of one image; reusable across programs of that image (caches the ld.so.cache)."""

    flavour = "glibc"

    def __init__(self, rootfs: RootFS, env: LoaderEnv, machine: str, elf_class: int) -> None:
        self.rootfs = rootfs
        self.env = env
        self.want = (elf_class, machine)
        self.check = _Checks(rootfs, self.want)
        self.default_dirs = default_dirs(rootfs, machine, elf_class)
        self.cache = load_cache(rootfs)
        self.bindings = Bindings(use_versions=True)
        self.versions = Versions()
        self.lib = posixpath.basename(self.default_dirs[0]) if self.default_dirs else "lib"
        self.platform = machine
        self.library_path = tuple(_split_dirs(env.library_path or "", ":;"))
        file = rootfs.read(PRELOAD_FILE)
        self.preloads, self.preload_gap = _capped(glibc_preloads(env.preload, file))
        if file is None and real_file(rootfs, PRELOAD_FILE) is not None:  # kept by the scan up to MAX_SMALL_FILE
            self.preload_gap = f"{PRELOAD_FILE} is larger than imgaudit reads: its preloads were not analysed"
        self._expanded: dict[tuple[tuple[str, ...], str], tuple[str, ...]] = {}
        self._searches: dict[tuple[str, _Plan], _Search] = {}

    def state(self) -> str:
        """What this loader read of the image once for all programs (linkmemo.py keys memos by it)."""
        ld_cache = self.rootfs.get("/etc/ld.so.cache")  # the node `load_cache` read, by its bytes
        return repr((self.flavour, self.want, self.env, self.default_dirs, self.lib, self.platform,
                     ld_cache.entry.digest if ld_cache else None, self.cache is not None, self.preloads))

    # -- DSTs (elf/dl-load.c `_dl_dst_substitute`) ------------------------------------------
    def expand(self, text: str, origin: str) -> str:
        """$ORIGIN, $LIB and $PLATFORM, bare or in braces; any other `$` is kept as written."""
        values = {"ORIGIN": origin, "LIB": self.lib, "PLATFORM": self.platform}
        return _DST.sub(lambda m: values[m.group(1) or m.group(2)], text)

    def _dirs(self, entries: tuple[str, ...], origin: str) -> tuple[str, ...]:
        """`fillin_rpath`: expand DSTs, drop trailing slashes; an empty element is the cwd."""
        key = (entries, origin)
        dirs = self._expanded.get(key)
        if dirs is None:
            out = []
            for entry in entries:
                expanded = self.expand(entry, origin)
                out.append(expanded.rstrip("/") or ("/" if expanded else self.env.cwd))
            dirs = self._expanded[key] = tuple(out)
        return dirs

    # -- the search (`_dl_map_object`) --------------------------------------------------------
    def search(self, name: str, loader: LoadedObject, chain: list[LoadedObject]) -> _Search:
        """The outcome depends only on the name and the dirs each step would try, so it is shared by
        every requester whose RPATH/RUNPATH/$ORIGIN give the same dirs (the result is not modified)."""
        key = (name, self._plan(name, loader, chain))
        s = self._searches.get(key)
        if s is None:
            s = self._searches[key] = self._run(*key)
        return s

    def _plan(self, name: str, loader: LoadedObject, chain: list[LoadedObject]) -> _Plan:
        """The steps before ld.so.cache, with their dirs expanded."""
        if "/" in name:
            path = self.expand(name, _origin(loader))
            return ((Step.PATH, (path if path.startswith("/") else posixpath.join(self.env.cwd, path),)),)
        plan = []
        runpath = loader.facts.runpath if loader.facts else ()
        if not runpath:
            # DT_RPATH of the requesting object, then of the objects that loaded it, up to the program
            # (ignored for an object with DT_RUNPATH: get-dynamic-info.h drops RPATH then).
            for obj in chain:
                rpath = obj.facts.rpath if obj.facts and not obj.facts.runpath else ()
                if rpath:
                    plan.append((Step.RPATH, self._dirs(rpath, _origin(obj))))
        if self.env.library_path:
            plan.append((Step.LD_LIBRARY_PATH, self._dirs(self.library_path, _origin(chain[-1]))))
        if runpath:
            plan.append((Step.RUNPATH, self._dirs(runpath, _origin(loader))))
        return tuple(plan)

    def _run(self, name: str, plan: _Plan) -> _Search:
        s, decided = _follow(name, plan, self._try)
        if decided:
            return s
        if self.cache is not None:
            entry = self.cache.lookup(name, self.want[1])
            # A cache entry whose file is gone or unfit is skipped; the default dirs come next.
            if entry is not None and self._try(s, (entry.path,), Step.LD_CACHE, ""):
                return s
        self._try(s, self.default_dirs, Step.DEFAULT, name)
        return s

    def _try(self, s: _Search, dirs: Sequence[str], step: Step, name: str) -> bool:
        for directory in dirs:
            path = posixpath.join(directory, name) if name else directory
            outcome, real = self.check(path)
            s.tried.append(Candidate(path, step, outcome))
            if outcome == "ok" and real is not None:
                s.found = (path, real, step)
                return True
            if outcome == "wrong-class":
                s.other_class = True
            elif outcome in _UNUSABLE and s.bad is None:
                s.bad = (path, _UNUSABLE[outcome])
                return True  # open_verify's errstring is fatal: the search stops there
        return False

    def not_found_message(self, s: _Search) -> str:
        if s.bad is not None:
            return f"{s.bad[0]}: {s.bad[1]}"
        if s.other_class:
            return f"{s.name}: {self._wrong_class()}"
        return f"{s.name}: cannot open shared object file: No such file or directory"

    def preload_message(self, s: _Search, where: str) -> str:
        """rtld.c `do_preload`: the error string alone (no errno text), and start-up goes on."""
        err = s.bad[1].removesuffix(_EISDIR) if s.bad else self._wrong_class() if s.other_class else \
            "cannot open shared object file"
        return f"ERROR: ld.so: object '{s.name}' from {where} cannot be preloaded ({err}): ignored."

    def _wrong_class(self) -> str:
        return f"wrong ELF class: ELFCLASS{32 if self.want[0] == 64 else 64}"

    def search_order(self, program: LoadedObject) -> tuple[tuple[str, str], ...]:
        out = []
        facts = program.facts
        if facts and facts.rpath and not facts.runpath:
            out.append(("rpath", ":".join(facts.rpath)))
        if self.env.library_path:
            out.append(("LD_LIBRARY_PATH", self.env.library_path))
        if facts and facts.runpath:
            out.append(("runpath", ":".join(facts.runpath)))
        out.append(("ld.so.cache", "present" if self.cache is not None else "absent"))
        out.append(("default dirs", ":".join(self.default_dirs)))
        return tuple(out)


def _origin(obj: LoadedObject) -> str:
    """$ORIGIN: the program's real directory (/proc/self/exe), a library's directory as named."""
    base = obj.real_path if obj.depth == 0 and obj.real_path else obj.name
    return posixpath.dirname(base) or "/"


def default_dirs(rootfs: RootFS, machine: str, elf_class: int) -> list[str]:
    """glibc's system search path (`SYSTEM_DIRS`, shown by `ld.so --help`): Debian and Ubuntu add the
    multiarch dirs before /lib and /usr/lib; Fedora-style 64-bit systems use /lib64 and /usr/lib64."""
    triplet = TRIPLETS.get((machine, elf_class))
    if triplet and any(real_file(rootfs, f"{d}/{triplet}/libc.so.6") for d in ("/lib", "/usr/lib")):
        return [f"/lib/{triplet}", f"/usr/lib/{triplet}", "/lib", "/usr/lib"]
    if elf_class == 64 and any(real_file(rootfs, f"{d}/libc.so.6") for d in ("/lib64", "/usr/lib64")):
        return ["/lib64", "/usr/lib64"]
    if triplet and any(rootfs.get(f"{d}/{triplet}") for d in ("/lib", "/usr/lib")):
        return [f"/lib/{triplet}", f"/usr/lib/{triplet}", "/lib", "/usr/lib"]
    return ["/lib", "/usr/lib"]


def load_cache(rootfs: RootFS) -> ldcache.LdCache | None:
    data = rootfs.read("/etc/ld.so.cache")
    if data is None:
        return None
    try:
        return ldcache.parse(data)
    except ldcache.LdCacheError:
        return None  # glibc ignores a cache it cannot read


def _capped(preloads: tuple[tuple[str, str], ...]) -> tuple[tuple[tuple[str, str], ...], str | None]:
    """The first MAX_PRELOADS, and what is left out: a 16 MiB /etc/ld.so.preload names a million libraries, each
    searched for every program of the image."""
    if len(preloads) <= MAX_PRELOADS:
        return preloads, None
    return preloads[:MAX_PRELOADS], f"{len(preloads) - MAX_PRELOADS} preloads past the first {MAX_PRELOADS} " \
                                    "not analysed"


def glibc_preloads(env_value: str | None, file: bytes | None) -> tuple[tuple[str, str], ...]:
    """What rtld.c's `dl_main` preloads, in order, each with where it was named: LD_PRELOAD split at spaces and
    colons (`handle_preload_list`), then /etc/ld.so.preload, its `#` comments blanked to the end of the line and
    the rest split at white space and colons (a NUL byte ends what `strsep` reads)."""
    out = [(name, LD_PRELOAD) for name in re.split("[ :]", env_value or "") if 0 < len(name) < PATH_MAX]
    if file:
        text = re.sub(r"#[^\n]*", "", file.decode("utf-8", "surrogateescape"))
        # A last word without a separator after it is read on its own (rtld.c's `problem`), the rest by strsep
        cut = len(text)
        while cut > 0 and text[cut - 1] not in _PRELOAD_SEPARATORS:
            cut -= 1
        head, last = (text[:-1], "") if cut == len(text) else (text[:max(cut - 1, 0)], text[cut:])
        words = [*re.split("[: \t\n]", head.split("\0", 1)[0]), last.split("\0", 1)[0]]
        out += [(name, PRELOAD_FILE) for name in words if name]
    return tuple(out)


# ------------------------------------------------------------------------------------------------
# musl


class MuslLoader:
    """musl's `ldso/dynlink.c`: the loader is libc; LD_LIBRARY_PATH, then the RPATH/RUNPATH of the
    requesting object and its requesters, then `/etc/ld-musl-ARCH.path` or the default path."""

    flavour = "musl"

    def __init__(self, rootfs: RootFS, env: LoaderEnv, machine: str, elf_class: int) -> None:
        self.rootfs = rootfs
        self.env = env
        self.want = (elf_class, machine)
        self.check = _Checks(rootfs, self.want)
        self.bindings = Bindings(use_versions=False)
        self.path_file = f"/etc/ld-musl-{MUSL_ARCH.get(machine, machine)}.path"
        self.sys_path, self.sys_step = self._sys_path()
        self.library_path = tuple(_split_dirs(env.library_path or "", ":\n"))
        # `load_preload`: split at white space and colons; musl reads no /etc/ld.so.preload
        self.preloads, self.preload_gap = _capped(
            tuple((name, LD_PRELOAD) for name in re.split(r"[\s:]+", env.preload or "") if name))
        self._searches: dict[tuple[str, _Plan], _Search] = {}

    def state(self) -> str:
        """What this loader read of the image once for all programs (linkmemo.py keys memos by it)."""
        return repr((self.flavour, self.want, self.env, self.sys_path, self.sys_step.value))

    def _sys_path(self) -> tuple[list[str], Step]:
        data = self.rootfs.read(self.path_file)
        if data is None and real_file(self.rootfs, self.path_file) is None:
            return _split_dirs(MUSL_DEFAULT_PATH, ":"), Step.MUSL_DEFAULT
        # path_open splits on ':' and newlines; an unreadable file acts as an empty path.
        text = (data or b"").decode("utf-8", "replace")
        return [d for d in _split_dirs(text, ":\n") if d], Step.MUSL_PATH_FILE

    def is_reserved(self, name: str) -> bool:
        if not name.startswith("lib"):
            return False
        return any(name[3:].startswith(r + ".") for r in MUSL_RESERVED)

    def search(self, name: str, loader: LoadedObject, chain: list[LoadedObject]) -> _Search:
        """Shared by every requester whose search dirs are the same, as in `GlibcLoader.search`."""
        key = (name, self._plan(name, chain))
        s = self._searches.get(key)
        if s is None:
            s = self._searches[key] = self._run(*key)
        return s

    def _plan(self, name: str, chain: list[LoadedObject]) -> _Plan:
        """The steps before the system path, with their dirs."""
        if "/" in name:  # open(2) as written: a relative name is from the cwd, the image's WorkingDir
            return ((Step.PATH, (name if name.startswith("/") else posixpath.join(self.env.cwd, name),)),)
        plan = [(Step.LD_LIBRARY_PATH, self.library_path)] if self.env.library_path else []
        for obj in chain:
            dirs = self._rpath(obj)
            if dirs is None:
                break  # fixup_rpath failed: "Inhibit further search"
            if dirs:
                plan.append((Step.RUNPATH if obj.facts and obj.facts.runpath else Step.RPATH, tuple(dirs)))
        return tuple(plan)

    def _run(self, name: str, plan: _Plan) -> _Search:
        s, decided = _follow(name, plan, self._try)
        if not decided:
            self._try(s, self.sys_path, self.sys_step, name)
        return s

    def _rpath(self, obj: LoadedObject) -> list[str] | None:
        """`fixup_rpath`: DT_RUNPATH wins over DT_RPATH; only $ORIGIN is expanded, and an rpath with any
        other `$` token is ignored."""
        facts = obj.facts
        entries = (facts.runpath or facts.rpath) if facts else ()
        text = ":".join(entries)
        if not text:
            return []
        origin = posixpath.dirname(obj.real_path if obj.depth == 0 and obj.real_path else obj.name)
        out = text.replace("${ORIGIN}", origin).replace("$ORIGIN", origin)
        return [] if "$" in out else [d for d in out.split(":") if d]

    def _try(self, s: _Search, dirs: Sequence[str], step: Step, name: str) -> bool:
        for directory in dirs:
            path = f"{directory}/{name}" if name else directory
            outcome, real = self.check(path)
            s.tried.append(Candidate(path, step, outcome))
            if outcome == "missing":
                continue
            # musl opens the first file that exists and maps it without looking further: a wrong
            # class/machine or a non-ELF file there is fatal (ENOEXEC), not skipped like in glibc.
            if outcome == "ok" and real is not None:
                s.found = (path, real, step)
            else:  # map_library's read fails on a directory; anything else mapped is no fit ELF
                s.bad = (path, "Is a directory" if outcome == "directory" else "Exec format error")
            return True
        return False

    def search_order(self, program: LoadedObject) -> tuple[tuple[str, str], ...]:
        facts = program.facts
        rpath = ":".join((facts.runpath or facts.rpath) if facts else ())
        out = [("LD_LIBRARY_PATH", self.env.library_path or ""), ("rpath/runpath", rpath),
               (self.sys_step.value, ":".join(self.sys_path))]
        return tuple((step, dirs) for step, dirs in out if dirs)

    def not_found_message(self, s: _Search, needed_by: str) -> str:
        err = s.bad[1] if s.bad else "No such file or directory"
        return f"Error loading shared library {s.name}: {err} (needed by {needed_by})"

    def preload_message(self, s: _Search, where: str) -> str:
        """musl's `load_preload` ignores a library it cannot load and prints nothing: these words are ours."""
        why = "cannot load" if s.bad else "does not find"
        return f"{where} names {s.name}, which musl's loader {why}: the program runs without it, and nothing says so"


# ------------------------------------------------------------------------------------------------
# The breadth-first walk and the checks after it.


Loader = GlibcLoader | MuslLoader


def loader_for(rootfs: RootFS, env: LoaderEnv, program: ElfFacts, interpreter_real: str | None) -> Loader:
    """musl when the program's interpreter is musl's loader, even under a glibc name (gcompat and
    libc6-compat make `/lib64/ld-linux-x86-64.so.2` a link to it); glibc otherwise."""
    cls = MuslLoader if is_musl_loader(rootfs, program, interpreter_real) else GlibcLoader
    return cls(rootfs, env, program.machine, program.elf_class)


def is_musl_loader(rootfs: RootFS, program: ElfFacts, interpreter_real: str | None) -> bool:
    if interpreter_real is None:
        return program.libc == "musl"
    name = posixpath.basename(interpreter_real)
    facts = facts_of(rootfs, interpreter_real)
    return name.startswith(("ld-musl-", "libc.musl-")) or (facts is not None and facts.libc == "musl")


def resolve(
    rootfs: RootFS,
    path: str,
    env: LoaderEnv | None = None,
    *,
    argv0: str | None = None,
    loader: Loader | None = None,
    as_library: bool = False,
    trace: list[str] | None = None,
) -> Resolution | None:
    """Resolution of the ELF object at `path` (None when it is not a dynamically linked ELF with
    facts). `argv0` names the program in glibc's messages (default: `path`). `as_library` skips the
    symbol checks an executable's global scope would decide. `trace` gets every path a search tried,
    cached searches too: with the objects' bytes, the answers the walk depended on (linkmemo.py)."""
    env = env or LoaderEnv()
    real = real_file(rootfs, path)
    facts = facts_of(rootfs, real) if real else None
    if facts is None or facts.error is not None or not (facts.needed or facts.interpreter):
        return None
    interp_real = real_file(rootfs, facts.interpreter) if facts.interpreter else None
    loader = loader or loader_for(rootfs, env, facts, interp_real)
    walk = _Walk(rootfs, loader, env, path, real, facts, argv0 or path, as_library, trace)
    return walk.run(interp_real)


class _Walk:
    def __init__(self, rootfs: RootFS, loader: Loader, env: LoaderEnv, path: str, real: str | None,
                 facts: ElfFacts, argv0: str, as_library: bool, trace: list[str] | None = None) -> None:
        self.rootfs = rootfs
        self.trace = trace
        self.loader = loader
        self.env = env
        self.argv0 = argv0
        self.as_library = as_library
        self.musl = isinstance(loader, MuslLoader)
        self.program = LoadedObject(path, real, facts, 0, names={path})
        self.objects: list[LoadedObject] = []
        self.by_real: dict[str, LoadedObject] = {}
        # The first object of `objects` each name (or, for glibc, DT_SONAME) matches, and each l_name's
        # object: what `_dl_name_match_p` over the namespace list and `l_loader` would find.
        self.by_match: dict[str, LoadedObject] = {}
        self.by_name: dict[str, LoadedObject] = {}
        self.chains: dict[int, list[LoadedObject]] = {}  # by id() of the requester
        self.links: list[Link] = []
        self.problems: list[Problem] = []
        self.rtld: LoadedObject | None = None
        self.rtld_loaded = False  # the interpreter is in `objects`: something needed it
        self._append(self.program)

    def _append(self, obj: LoadedObject) -> None:
        self.objects.append(obj)
        self.rtld_loaded = self.rtld_loaded or obj is self.rtld
        if obj.real_path:
            self.by_real[obj.real_path] = obj
        self.by_name.setdefault(obj.name, obj)
        for name in obj.names:
            self.by_match.setdefault(name, obj)
        if not self.musl and obj.soname:
            self.by_match.setdefault(obj.soname, obj)


    def run(self, interp_real: str | None) -> Resolution:
        facts = self.program.facts
        assert facts is not None
        if facts.interpreter:
            self._add_interpreter(facts.interpreter, interp_real)
        self._map_all()
        self._check_versions()
        self._check_symbols()
        search = self.loader.search_order(self.program)
        return Resolution(self.program.name, self.loader.flavour, facts.interpreter, tuple(self.objects),
                          tuple(self.links), tuple(self.problems), search)

    def _add_interpreter(self, interp: str, real: str | None) -> None:
        """glibc puts ld.so itself (named by PT_INTERP) in the namespace before any DT_NEEDED; musl's
        loader answers to its own name and to the reserved libc names."""
        facts = facts_of(self.rootfs, real) if real else None
        names = {interp} | ({facts.soname} if facts and facts.soname else set())
        self.rtld = LoadedObject(interp, real, facts, 1, needed_by=None, names=names)

    def _chain(self, obj: LoadedObject) -> list[LoadedObject]:
        """The requesting object, the one that loaded it, … up to the program (`l_loader`); the same
        for each of its DT_NEEDED entries."""
        chain = self.chains.get(id(obj))
        if chain is not None:
            return chain
        chain = self.chains[id(obj)] = []
        cur: LoadedObject | None = obj
        while cur is not None and not any(c is cur for c in chain):
            chain.append(cur)
            parent = cur.needed_by
            cur = self.by_name.get(parent) if parent else None
        return chain

    def _map_all(self) -> None:
        queue = deque([self.program])
        if not self.as_library:  # a library's preloads are those of the program that loads it
            queue.extend(self._preload())
        while queue:
            obj = queue.popleft()
            for name in obj.facts.needed if obj.facts else ():
                new = self._map(name, obj)
                if new is not None:
                    queue.append(new)

    def _find_loaded(self, name: str) -> LoadedObject | None:
        """`_dl_name_match_p` then DT_SONAME (glibc); musl matches the short name it searched for."""
        known = self.by_match.get(name)
        if known is not None:
            return known
        rtld = self.rtld  # last when not yet in the namespace list
        if rtld is not None and (name in rtld.names or (not self.musl and rtld.soname == name)):
            return rtld
        return None

    def _map(self, name: str, requester: LoadedObject) -> LoadedObject | None:
        if self.musl and self._musl_self(name):
            return self._reuse(name, requester, self.rtld, Step.MUSL_LIBC)
        known = self._find_loaded(name)
        if known is not None:
            step = Step.INTERPRETER if known is self.rtld else Step.LOADED
            return self._reuse(name, requester, known, step)
        s = self._search(name, requester, self._chain(requester))
        if s.found is None:
            self._not_found(s, requester)
            return None
        path, real, step = s.found
        same = self._same_file(name, real)
        if same is not None:
            return self._reuse(name, requester, same, step, path)
        self._record(Link(name, requester.name, path, real, step, None, tuple(s.tried)), requester)
        return self._new_object(name, path, real, requester.depth + 1, requester.name)

    def _search(self, name: str, requester: LoadedObject, chain: list[LoadedObject]) -> _Search:
        s = self.loader.search(name, requester, chain)
        if self.trace is not None:
            self.trace.extend(c.path for c in s.tried)
        return s

    def _same_file(self, name: str, real: str) -> LoadedObject | None:
        """The object already mapped from the file a search found (glibc: the same inode), ld.so included, which
        now answers to `name` too."""
        same = self.by_real.get(real) or (self.rtld if self.rtld and self.rtld.real_path == real else None)
        if same is not None:
            same.names.add(name)
            if same is not self.rtld or self.rtld_loaded:
                self.by_match.setdefault(name, same)
        return same

    def _new_object(self, name: str, path: str, real: str, depth: int, needed_by: str) -> LoadedObject:
        obj = LoadedObject(path, real, facts_of(self.rootfs, real), depth, needed_by, {name, path})
        self._append(obj)
        if obj.facts is None or obj.facts.error:
            self.problems.append(Problem("unknown", False, path, f"{path}: no ELF facts (not analysed)"))
        return obj

    def _preload(self) -> list[LoadedObject]:
        """rtld.c `do_preload` (glibc) and `load_preload` (musl): each name is mapped after the program and before
        its DT_NEEDED, so its dependencies come next in the breadth-first walk and its symbols come before theirs.
        glibc searches it as a DT_NEEDED of the program, and its RPATH chain goes on to the program (`l_loader`);
        musl searches it for no object, so no RPATH applies. One that cannot be loaded is ignored: glibc says so
        on stderr, musl not at all."""
        out = []
        chain = [] if self.musl else self._chain(self.program)
        if self.loader.preload_gap is not None:
            where = self.loader.preloads[-1][1] if self.loader.preloads else PRELOAD_FILE
            self.problems.append(Problem("unknown", False, where, self.loader.preload_gap))
        for name, where in self.loader.preloads:
            if (self.musl and self._musl_self(name)) or self._find_loaded(name) is not None:
                continue  # already in the namespace: nothing new is mapped
            s = self._search(name, self.program, chain)
            if s.found is None:
                self.problems.append(Problem("preload-missing", False, where, self.loader.preload_message(s, where),
                                             library=name))
                continue
            path, real, step = s.found
            if self._same_file(name, real) is not None:
                continue
            self.links.append(Link(name, where, path, real, step, None, tuple(s.tried)))  # an edge of no object
            obj = self._new_object(name, path, real, 1, where)
            self.chains[id(obj)] = [obj, *chain]
            out.append(obj)
        return out

    def _musl_self(self, name: str) -> bool:
        assert isinstance(self.loader, MuslLoader)
        return self.loader.is_reserved(name) or (self.rtld is not None and name == self.rtld.name)

    def _reuse(self, name: str, requester: LoadedObject, obj: LoadedObject | None, step: Step,
               path: str | None = None) -> LoadedObject | None:
        if obj is None:  # musl reserved name but no interpreter object (cannot happen for a dynamic ELF)
            return None
        first = obj is self.rtld and not self.rtld_loaded
        link = Link(name, requester.name, path or obj.name, obj.real_path, step, None, (), first)
        self.links.append(link)  # _record, inline: the hottest edge of the walk
        requester.links.append(link)
        if first:
            obj.depth, obj.needed_by = requester.depth + 1, requester.name
            self._append(obj)
            return obj
        return None

    def _record(self, link: Link, requester: LoadedObject) -> None:
        self.links.append(link)
        requester.links.append(link)

    def _not_found(self, s: _Search, requester: LoadedObject) -> None:
        reason = "wrong ELF class" if s.other_class else ("unusable file" if s.bad else "not found")
        link = Link(s.name, requester.name, None, None, None, reason, tuple(s.tried))
        self._record(link, requester)
        if isinstance(self.loader, MuslLoader):
            message = self.loader.not_found_message(s, self._musl_name(requester))
        else:
            message = f"{self.argv0}: error while loading shared libraries: {self.loader.not_found_message(s)}"
        self.problems.append(Problem("missing-library", True, requester.name, message, library=s.name))

    def _musl_name(self, obj: LoadedObject) -> str:
        return obj.name

    def _glibc_name(self, obj: LoadedObject) -> str:
        """`DSO_FILENAME (l_name)`: the program's l_name is empty, so its argv[0] stands in."""
        return self.argv0 if obj is self.program else obj.name

    # -- dl-version.c ----------------------------------------------------------------------------
    def _check_versions(self) -> None:
        if not isinstance(self.loader, GlibcLoader):
            return  # musl ignores symbol versions
        versions = self.loader.versions
        providers: dict[str, tuple[str, ElfFacts] | None] = {}  # the namespace is complete now

        def find(file: str) -> tuple[str, ElfFacts] | None:
            if file not in providers:
                found = self._find_loaded(file)
                providers[file] = (_key(found), found.facts) if found is not None and found.facts else None
            return providers[file]

        for obj in self.objects:
            if obj.facts is None or not obj.facts.version_needs or versions.all_met(_key(obj), obj.facts, find):
                continue
            for need in obj.facts.version_needs:
                provider = self._find_loaded(need.file)
                if provider is None or provider.facts is None or provider.facts.error:
                    continue  # not loaded: already a missing-library problem
                self._match_version(obj, provider, need.version, need.weak)

    def _match_version(self, obj: LoadedObject, provider: LoadedObject, version: str, weak: bool) -> None:
        assert provider.facts is not None
        requirer = self._glibc_name(obj)
        if not provider.facts.version_defs:
            self.problems.append(Problem("no-version-info", False, obj.name,
                                         f"{self.argv0}: {provider.name}: no version information available "
                                         f"(required by {requirer})", library=provider.name, version=version))
            return
        if version in provider.facts.version_defs:
            return
        kind, fatal, what = ("weak-version", False, "weak version") if weak else ("glibc-version", True, "version")
        message = f"{self.argv0}: {provider.name}: {what} `{version}' not found (required by {requirer})"
        self.problems.append(Problem(kind, fatal, obj.name, message, library=provider.name, version=version))

    # -- relocation (dl-lookup.c / musl do_relocs) ------------------------------------------------
    def _scope(self) -> list[LoadedObject]:
        scope = list(self.objects)
        if self.rtld is not None and not self.rtld_loaded:
            scope.append(self.rtld)
        return scope

    def _check_symbols(self) -> None:
        if self.as_library:
            return  # a library's scope depends on the program that loads it
        scope = {_key(o): o.facts for o in self._scope() if o.facts}
        order = self.objects[1:] + self.objects[:1]  # libraries are relocated before the program
        for obj in order:
            if obj is self.rtld or not obj.facts:
                continue
            needed = {link.real_path for link in obj.links if link.real_path}
            unbound = self.loader.bindings.unbound(_key(obj), obj.facts, scope, needed)
            if unbound:
                lazy = not (self.musl or obj.facts.bind_now or self.env.bind_now)
                absent = self._absent_version_files(obj)
                self.problems.extend(self._symbol_problem(obj, sym, lazy) for sym in unbound
                                     if sym.version not in absent)

    def _absent_version_files(self, obj: LoadedObject) -> set[str | None]:
        """glibc: versions of a library that was not loaded; that library's error already stops
        start-up, so its symbols are not reported twice (musl, which prints every relocation error,
        keeps them)."""
        if self.musl or obj.facts is None:
            return set()
        return {n.version for n in obj.facts.version_needs if self._find_loaded(n.file) is None}

    def _symbol_problem(self, obj: LoadedObject, sym: Symbol, lazy: bool) -> Problem:
        if self.musl:
            message = f"Error relocating {obj.name}: {sym.name}: symbol not found"
        else:
            version = f", version {sym.version}" if sym.version else ""
            message = (f"{self.argv0}: symbol lookup error: {self._glibc_name(obj)}: "
                       f"undefined symbol: {sym.name}{version}")
        return Problem("missing-symbol", not lazy, obj.name, message, version=sym.version, symbol=sym.name)


def _key(obj: LoadedObject) -> str:
    """What a loaded object's facts are cached under across resolutions of one image."""
    return obj.real_path or obj.name


def to_dict(res: Resolution) -> dict[str, object]:
    """The JSON of `imgaudit ldd --format json`."""
    return {
        "path": res.program,
        "loader": res.flavour,
        "interpreter": res.interpreter,
        "search": [{"step": step, "dirs": dirs} for step, dirs in res.search],
        "objects": [{"name": o.name, "real_path": o.real_path, "soname": o.soname, "depth": o.depth,
                     "needed_by": o.needed_by} for o in res.objects],
        "needed": [{"name": link.name, "needed_by": link.needed_by, "path": link.path, "real_path": link.real_path,
                    "via": link.step.value if link.step else None, "reason": link.reason, "new": link.new,
                    "tried": [{"path": c.path, "via": c.step.value, "outcome": c.outcome} for c in link.tried]}
                   for link in res.links],
        "problems": [{"kind": p.kind, "fatal": p.fatal, "object": p.object, "message": p.message,
                      "library": p.library, "version": p.version, "symbol": p.symbol} for p in res.problems],
        "verdict": "fail" if res.fatal else "ok",
        "message": res.fatal.message if res.fatal else None,
    }

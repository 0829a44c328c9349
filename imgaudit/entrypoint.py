"""Will the entrypoint start? What Docker, runc, the kernel and the loader do with argv, predicted on
the image alone.

Order (runc 1.1 `libcontainer/standard_init_linux.go`, Linux `fs/exec.c`, `fs/binfmt_script.c`,
`fs/binfmt_elf.c`): argv = Entrypoint + Cmd; the user is looked up in /etc/passwd; `exec.LookPath`
finds argv[0] in the image's PATH and wants some execute bit; `eaccess` wants execute permission for
the user; then the kernel: `#!` scripts (binfmt_script's parse of the first 256 bytes, interpreter as
written, `\r` included), ELF machine vs platform, and `open_exec` of the interpreter (`#!` or PT_INTERP:
present, a regular file, executable); then the loader (loader.py); then, for `#!/usr/bin/env ARG`, what
env does with ARG (GNU's or busybox's options, the program on PATH). Messages are the significant part
of what the container prints (see tests/e2e/test_oracle.py for how they map to Docker 20.10's output).
"""

from __future__ import annotations

import contextlib
import posixpath
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from imgaudit.image import DEFAULT_PATH, ImageConfig, Platform
from imgaudit.layers import Entry
from imgaudit.loader import LoaderEnv, Resolution, facts_of, ident, real_file, resolve
from imgaudit.rootfs import RootFS, SymlinkLoop
from imgaudit.users import User, UserNotFound, resolve_user
from imgaudit.xattrs import CAP_NAMES, capability_sets

if TYPE_CHECKING:
    from imgaudit.audit import Loaded

# Docker platform architecture → ELF machine (elf.py names); i386 also runs on amd64 kernels.
ARCH_MACHINES = {"amd64": ("x86_64", "i386"), "arm64": ("aarch64",), "386": ("i386",), "arm": ("arm",),
                 "ppc64le": ("ppc64le",), "s390x": ("s390x",), "riscv64": ("riscv64",)}
MAX_SCRIPT_DEPTH = 4  # fs/exec.c: at most 4 levels of binfmt (script → script …) before ELOOP
ENOENT, EACCES, ENOEXEC = "no such file or directory", "permission denied", "exec format error"
ELIBBAD, ELOOP = "accessing a corrupted shared library", "too many levels of symbolic links"
EPERM = "operation not permitted"
# moby's oci/caps DefaultCapabilities: chown, dac_override, fowner, fsetid, kill, setgid, setuid, setpcap,
# net_bind_service, net_raw, sys_chroot, mknod, audit_write, setfcap
DOCKER_DEFAULT_CAPS = frozenset({0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31})


@dataclass(frozen=True)
class Verdict:
    """The entrypoint verdict: `failure` is a report category, `message` the line the container prints."""

    argv: tuple[str, ...]
    path: str | None = None
    verdict: str = "ok"
    failure: str | None = None
    message: str | None = None
    program: str | None = None  # the ELF the loader runs (the entrypoint, or a script's interpreter)
    resolution: Resolution | None = None
    script: str | None = None  # the `#!` line followed, if any
    notes: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class _Context:
    rootfs: RootFS
    env: tuple[str, ...]
    path_dirs: tuple[str, ...]
    cwd: str
    user: User
    machines: tuple[str, ...]


@dataclass(frozen=True)
class _Chain:
    """Where the kernel's execve of one file ends: an ELF to hand to the loader, or an errno."""

    errno: str | None = None
    failure: str | None = None
    elf: str | None = None
    argv0: str = ""
    script: str | None = None
    env_name: str | None = None  # `#!/usr/bin/env NAME`
    refusal: str | None = None  # what the interpreter (env, a shell) says of the `#!` line's argument, and exits
    caution: str | None = None  # an argument an unknown interpreter may refuse (a CRLF line's `\r`)


def argv_of(config: ImageConfig) -> list[str]:
    """Entrypoint + Cmd (Cmd alone without Entrypoint), as Docker builds the process args."""
    return list(config.entrypoint or ()) + list(config.cmd or ())


def verdict(loaded: Loaded, argv: list[str] | None = None, *, user: str | None = None,
            platform: Platform | None = None) -> Verdict:
    """Verdict for `argv` (default: the image's) as `user` (default: the image's USER) on `platform`
    (default: the image's own)."""
    config = loaded.image.config
    return judge(loaded.rootfs, config, argv_of(config) if argv is None else argv,
                 user=config.user if user is None else user, platform=platform or config.platform)


def judge(rootfs: RootFS, config: ImageConfig, argv: list[str], *, user: str = "",
          platform: Platform | None = None) -> Verdict:
    base = Verdict(tuple(argv))
    if not argv:
        return replace(base, verdict="fail", failure="entrypoint-missing", message="No command specified")
    try:
        who = resolve_user(rootfs, user)
    except UserNotFound as err:
        return replace(base, verdict="fail", failure="other", message=str(err))
    plat = platform or config.platform
    path_value = config.env_value("PATH")
    ctx = _Context(rootfs, config.env, tuple((DEFAULT_PATH if path_value is None else path_value).split(":")),
                   config.working_dir or "/", who, ARCH_MACHINES.get(plat.architecture, (plat.architecture,)))
    return _start(ctx, base, argv[0])


def _start(ctx: _Context, base: Verdict, arg0: str) -> Verdict:
    name, error = look_path(ctx, arg0)
    if error is not None:
        failure = "not-executable" if error.endswith(EACCES) else "entrypoint-missing"
        return replace(base, path=name, verdict="fail", failure=failure, message=error)
    assert name is not None
    base = replace(base, path=name)
    if not can_execute(ctx.rootfs, name, ctx.user):
        return replace(base, verdict="fail", failure="not-executable", message=f"exec {name}: {EACCES}")
    chain = _kernel(ctx, name, arg0, 0)
    base = replace(base, script=chain.script, program=chain.elf)
    if chain.errno is not None:
        return replace(base, verdict="fail", failure=chain.failure, message=f"exec {name}: {chain.errno}")
    return _after_kernel(ctx, base, chain, name)


def _after_kernel(ctx: _Context, base: Verdict, chain: _Chain, execfn: str) -> Verdict:
    assert chain.elf is not None
    loaded = _load(ctx, base, chain.elf, chain.argv0)
    if loaded.verdict == "fail":
        return loaded
    if chain.refusal is not None:
        return replace(loaded, verdict="fail", failure="script-interpreter-missing", message=chain.refusal)
    if chain.caution is not None:
        verdict = "warn" if loaded.verdict == "ok" else loaded.verdict
        loaded = replace(loaded, verdict=verdict, message=loaded.message or chain.caution,
                         notes=(*loaded.notes, chain.caution))
    if chain.env_name is None:
        return loaded
    return _env_exec(ctx, loaded, chain.elf, chain.env_name)


# -- runc: LookPath -------------------------------------------------------------------------------


def look_path(ctx: _Context, arg0: str) -> tuple[str | None, str | None]:
    """Go 1.19 `exec.LookPath` as runc runs it (PATH from the image Env): (name, error message)."""
    if "/" in arg0:
        err = _find_executable(ctx, arg0)
        return arg0, None if err is None else f'exec: "{arg0}": {err}'
    for directory in ctx.path_dirs:
        candidate = posixpath.join(directory or ".", arg0)
        if _find_executable(ctx, candidate) is None:
            return candidate, None
    return None, f'exec: "{arg0}": executable file not found in $PATH'


def _find_executable(ctx: _Context, name: str) -> str | None:
    """Go `findExecutable`: stat (following links) as the user, then not a directory and some execute bit."""
    path = name if name.startswith("/") else posixpath.join(ctx.cwd, name)
    try:
        real = ctx.rootfs.resolve(path)
    except SymlinkLoop:
        return f"stat {name}: {ELOOP}"
    if search_denied(ctx.rootfs, path, ctx.user) is not None:
        return f"stat {name}: {EACCES}"
    node = ctx.rootfs.nodes.get(real) if real else None
    if node is None:
        return f"stat {name}: {_missing_errno(ctx.rootfs, path)}"
    if node.is_dir or not node.entry.mode & 0o111:
        return EACCES
    return None


def _missing_errno(rootfs: RootFS, path: str) -> str:
    """ENOTDIR when a parent is a file, else ENOENT."""
    parent = posixpath.dirname(path)
    while parent not in ("/", ""):
        node = rootfs.get(parent)
        if node is not None:
            return "not a directory" if not node.is_dir else ENOENT
        parent = posixpath.dirname(parent)
    return ENOENT


def search_denied(rootfs: RootFS, path: str, user: User) -> str | None:
    """The first directory the path walk looks in (symlinks followed) that `user` may not search: EACCES, before
    whatever comes after it. Root searches any (CAP_DAC_OVERRIDE is in Docker's default set)."""
    if user.uid == 0:
        return None
    searched: list[str] = []
    with contextlib.suppress(SymlinkLoop):  # ELOOP, unless a directory before the loop refused the walk
        rootfs.resolve(path, searched=searched)
    return next((d for d in dict.fromkeys(searched) if d in rootfs.nodes
                 and not _permits(rootfs.nodes[d].entry, user, 0o1)), None)


def _permits(entry: Entry, user: User, bit: int) -> bool:
    """The owner, group or other `bit` (1 execute/search, 2 write, 4 read) that applies to a non-root user."""
    if entry.uid == user.uid:
        return bool(entry.mode >> 6 & bit)
    if entry.gid in user.groups:
        return bool(entry.mode >> 3 & bit)
    return bool(entry.mode & bit)


def can_execute(rootfs: RootFS, path: str, user: User) -> bool:
    """faccessat2(X_OK, AT_EACCESS): root needs any execute bit; others the owner/group/other one."""
    real = real_file(rootfs, path)
    if real is None:
        return rootfs.get(path) is not None
    entry = rootfs.nodes[real].entry
    if user.uid == 0:
        return bool(entry.mode & 0o111)
    return _permits(entry, user, 0o1)


# -- the kernel ----------------------------------------------------------------------------------


def _kernel(ctx: _Context, path: str, argv0: str, depth: int) -> _Chain:
    """execve(path): follows `#!` to an ELF, checking what binfmt_script and binfmt_elf check."""
    real = real_file(ctx.rootfs, path if path.startswith("/") else posixpath.join(ctx.cwd, path))
    if real is None:
        return _Chain(ENOENT, "entrypoint-missing")
    head = ctx.rootfs.nodes[real].entry.head
    if head.startswith(b"#!"):
        return _script(ctx, path, head, depth)
    return _elf(ctx, real, path, argv0, head)


BINPRM_BUF_SIZE = 256  # the bytes of a file the kernel reads for its binfmt handlers
_SPACETAB = b" \t"


def _next_non_spacetab(buf: bytearray, first: int, last: int) -> int | None:
    return next((i for i in range(first, last + 1) if buf[i] not in _SPACETAB), None)


def _next_terminator(buf: bytearray, first: int, last: int) -> int | None:
    return next((i for i in range(first, last + 1) if buf[i] in _SPACETAB or buf[i] == 0), None)


def _c_string(buf: bytearray, start: int) -> str:
    return buf[start:buf.index(0, start)].decode("utf-8", "surrogateescape")


def parse_shebang(head: bytes) -> tuple[str, str | None] | None:
    """binfmt_script's `load_script` (Linux ≥ 5.1) on a file starting with `#!`: (interpreter, optional argument),
    or None for ENOEXEC. The line is read from the first 256 bytes (NUL-padded); without a newline there, an
    interpreter with no space, tab or NUL after it is taken as truncated. Blanks and tabs (only) around the
    interpreter are dropped, so a CRLF line keeps its `\r`; the rest is one argument; both end at a NUL byte."""
    buf = bytearray(head[:BINPRM_BUF_SIZE].ljust(BINPRM_BUF_SIZE, b"\0"))
    buf_end = BINPRM_BUF_SIZE - 1
    newline = buf.find(b"\n")
    if newline >= 0:
        i_end = newline
    else:
        first = _next_non_spacetab(buf, 2, buf_end)
        if first is None or _next_terminator(buf, first, buf_end) is None:
            return None
        i_end = buf_end
    while buf[i_end - 1] in _SPACETAB:
        i_end -= 1
    i_name = _next_non_spacetab(buf, 2, i_end)
    if i_name is None or i_name == i_end:
        return None
    i_sep = _next_terminator(buf, i_name, i_end)
    i_arg = _next_non_spacetab(buf, i_sep, i_end) if i_sep is not None and buf[i_sep] else None
    buf[i_end] = 0
    if i_arg is not None:
        assert i_sep is not None
        buf[i_sep] = 0
    return _c_string(buf, i_name), (_c_string(buf, i_arg) if i_arg is not None else None)


def open_exec(ctx: _Context, path: str) -> str | None:
    """The kernel's `open_exec` of an interpreter (a `#!` line's or PT_INTERP): None when it opens, else the
    errno's words. Not a regular file (a directory; the empty name, which is the working dir) or no execute
    permission for the user: EACCES."""
    target = path if path.startswith("/") else posixpath.join(ctx.cwd, path) if path else ctx.cwd
    if search_denied(ctx.rootfs, target, ctx.user) is not None:  # before a loop or a missing part the walk meets
        return EACCES
    try:
        real = ctx.rootfs.resolve(target)
    except SymlinkLoop:
        return ELOOP
    if real is None or real not in ctx.rootfs.nodes:
        return _missing_errno(ctx.rootfs, target)
    if real_file(ctx.rootfs, real) is None or not can_execute(ctx.rootfs, real, ctx.user):
        return EACCES
    return None


_OPEN_FAILURES = {EACCES: "not-executable", ELOOP: "other"}  # else (ENOENT, ENOTDIR) the interpreter is missing


def _script(ctx: _Context, path: str, head: bytes, depth: int) -> _Chain:
    parsed = parse_shebang(head)
    if parsed is None:
        return _Chain(ENOEXEC, "exec-format")
    interp, arg = parsed
    line = head.split(b"\n", 1)[0].decode("utf-8", "surrogateescape")
    if depth >= MAX_SCRIPT_DEPTH:
        return _Chain(ELOOP, "other", script=line)
    err = open_exec(ctx, interp)
    if err is not None:
        return _Chain(err, _OPEN_FAILURES.get(err, "script-interpreter-missing"), script=line)
    chain = _kernel(ctx, interp, interp, depth + 1)
    env_name, refusal, caution = None, None, None
    if arg and _is_env(ctx.rootfs, interp):
        env_name, refusal = _env_line(ctx, interp, arg)
    elif arg and arg.endswith("\r"):
        refusal, caution = _carriage_return(ctx, interp, arg)
    return replace(chain, script=chain.script or line, env_name=chain.env_name or env_name,
                   refusal=chain.refusal or refusal, caution=chain.caution or caution)


# A CRLF `#!` line with an argument: the shell gets `-e\r` (or a lone `\r` after a blank) and says so, each in its
# words, before reading a line of the script. Option letters every one of them takes, before the `\r`.
_SHELL_OPTIONS = frozenset("aefnuvx")
_SHELL_WORDS = {
    "dash": ("{0}: 0: Illegal option -\r", "{0}: 0: cannot open \r: No such file"),
    "bash": ("{0}: -\r: invalid option", "{0}: \r: No such file or directory"),
    "busybox": ("{0}: illegal option -\r", "{0}: can't open '\r': No such file or directory"),
}


def _carriage_return(ctx: _Context, interp: str, arg: str) -> tuple[str | None, str | None]:
    """(the line a known shell prints, or a caution for any other interpreter) for an argument ending in `\r`."""
    words = _SHELL_WORDS.get(_program_name(ctx.rootfs, interp))
    option = arg.startswith("-") and set(arg[1:-1]) <= _SHELL_OPTIONS
    if words is not None and (option or arg == "\r"):
        return (words[0] if option else words[1]).format(interp), None
    return None, f"{interp} gets the argument {arg!r} (the `#!` line ends in CRLF): it may refuse it"


# env's short options: those that take no argument, and those that take the rest of the word (or the next argument)
_ENV_OPTIONS = {"busybox": ("i0", "u"), "gnu": ("i0v", "uCS")}
_ENV_LONG = {"busybox": ("ignore-environment", "null", "unset"),
             "gnu": ("ignore-environment", "null", "unset", "chdir", "default-signal", "ignore-signal", "block-signal",
                     "list-signal-handling", "debug", "split-string", "help", "version")}


def _env_long_option(interp: str, arg: str, flavour: str) -> tuple[str | None, str | None]:
    """getopt_long: the name up to a `=` matches an option exactly or as the prefix of just one; the rest of the
    shebang's word (a blank and the program) is part of the name. Only GNU's --split-string=STR is followed."""
    name, _, value = arg[2:].partition("=")
    matches = [o for o in _ENV_LONG[flavour] if o == name] or [o for o in _ENV_LONG[flavour] if o.startswith(name)]
    if len(matches) == 1 and name:
        return (_split_string(value) if matches[0] == "split-string" and value else None), None
    if flavour == "busybox":  # musl's wording, glibc's (GNU env)
        return None, f"{interp}: unrecognized option: {arg[2:]}"
    return None, f"{interp}: unrecognized option '{arg}'"


def _env_line(ctx: _Context, interp: str, arg: str) -> tuple[str | None, str | None]:
    """`#!/usr/bin/env ARG`: env gets ARG as one argument, then the script's path. (the program env runs, or None;
    the error env's getopt prints, or None). A word without a dash is the program. GNU env's `-S` splits the rest
    of its word at white space and runs its first word that is no NAME=VALUE; busybox env knows no `-S`, and
    getopt of either refuses an option letter it does not know (the blank in `-i sh`). Options whose argument is
    the script's own path (`-u`, a bare `-S`) make env exec the script again: not followed."""
    if not arg.startswith("-"):
        return arg, None
    flavour = "busybox" if _program_name(ctx.rootfs, interp) == "busybox" else "gnu"
    if arg.startswith("--"):
        return _env_long_option(interp, arg, flavour)
    alone, with_arg = _ENV_OPTIONS[flavour]
    for i, letter in enumerate(arg[1:], 1):
        if letter in alone:
            continue
        if letter in with_arg:
            rest = arg[i + 1:]
            return (_split_string(rest) if letter == "S" and rest else None), None
        real = real_file(ctx.rootfs, interp)
        facts = facts_of(ctx.rootfs, real) if real is not None else None
        libc = facts.libc if facts is not None and facts.libc in ("musl", "glibc") else None
        if (libc or ("musl" if flavour == "busybox" else "glibc")) == "musl":  # whose getopt words it
            return None, f"{interp}: unrecognized option: {letter}"
        return None, f"{interp}: invalid option -- '{letter}'"
    return None, None


def _split_string(text: str) -> str | None:
    """GNU env -S: its first word that is not a NAME=VALUE assignment (quotes and escapes aside)."""
    words = [w for w in text.split() if "=" not in w]
    return words[0] if words and not words[0].startswith("-") else None




def _program_name(rootfs: RootFS, path: str) -> str:
    """The name of the file a path leads to (`/bin/sh` → `dash`, `/usr/bin/env` → `busybox`), or "" if none."""
    return posixpath.basename(real_file(rootfs, path) or "")


def _is_env(rootfs: RootFS, interp: str) -> bool:
    return posixpath.basename(interp) == "env"


def _elf(ctx: _Context, real: str, path: str, argv0: str, head: bytes) -> _Chain:
    got = ident(head)
    if got is None or got[1] not in ctx.machines:
        return _Chain(ENOEXEC, "exec-format")
    facts = facts_of(ctx.rootfs, real)
    if facts is None or facts.error is not None:
        return _Chain(elf=path, argv0=argv0)  # the loader step will say it cannot tell
    if facts.elf_type in ("rel", "core", "other"):
        return _Chain(ENOEXEC, "exec-format")
    if facts.interpreter is not None:
        err = open_exec(ctx, facts.interpreter)
        if err is not None:
            return _Chain(err, _OPEN_FAILURES.get(err, "missing-interpreter"), elf=path)
        interp = real_file(ctx.rootfs, facts.interpreter)
        assert interp is not None
        interp_id = ident(ctx.rootfs.nodes[interp].entry.head)
        if interp_id is None or interp_id != got:
            return _Chain(ELIBBAD, "other", elf=path)  # load_elf_binary: a bad interpreter is ELIBBAD
    if beyond_default_caps(ctx.rootfs.nodes[real].entry.capabilities):
        return _Chain(EPERM, "other", elf=path)
    return _Chain(elf=path, argv0=argv0)


def cap_add_flags(capabilities: tuple[str, ...]) -> str:
    """`docker run` flags that grant them: cap_net_admin → `--cap-add NET_ADMIN`."""
    return " ".join(f"--cap-add {name.removeprefix('cap_').upper()}" for name in capabilities)


def beyond_default_caps(capabilities: str | None) -> tuple[str, ...]:
    """The file capabilities `docker run` cannot give: with the effective flag set, the kernel's
    `bprm_caps_from_vfs_caps` refuses the exec (EPERM) when a permitted one is outside the bounding set, and
    Docker's default set is DOCKER_DEFAULT_CAPS (`--cap-add` widens it)."""
    sets = capability_sets(capabilities) if capabilities else None
    if sets is None or not sets[2]:
        return ()
    return tuple(CAP_NAMES[bit] if bit < len(CAP_NAMES) else str(bit) for bit in range(64)
                 if sets[0] >> bit & 1 and bit not in DOCKER_DEFAULT_CAPS)


# -- the loader and `env NAME` -------------------------------------------------------------------


def _load(ctx: _Context, base: Verdict, elf: str, argv0: str) -> Verdict:
    real = real_file(ctx.rootfs, elf)
    facts = facts_of(ctx.rootfs, real) if real else None
    if facts is None or facts.error is not None:
        why = facts.error if facts is not None and facts.error else "no ELF facts"
        return replace(base, verdict="unknown", notes=(*base.notes, f"{elf}: cannot analyse ({why})"))
    env = LoaderEnv.from_env(ctx.env, ctx.cwd)
    res = resolve(ctx.rootfs, elf, env, argv0=argv0)
    if res is None:
        return base  # static: nothing more to load
    base = replace(base, resolution=res)
    fatal = res.fatal
    if fatal is not None:
        return replace(base, verdict="fail", failure=fatal.kind, message=fatal.message)
    return _warnings(base, res, facts.libc)


def _warnings(base: Verdict, res: Resolution, libc: str) -> Verdict:
    notes = list(base.notes)
    lazy = [p for p in res.problems if p.kind == "missing-symbol"]
    if lazy:
        notes.append(f"{lazy[0].message} (only when called: the object is not BIND_NOW)")
    if res.flavour == "musl" and libc == "glibc":
        notes.append(f"glibc binary run by musl's loader ({res.interpreter}): a compat layer, not glibc")
    notes.extend(p.message for p in res.problems if p.kind in ("preload-missing", "unknown"))
    if not notes:
        return base
    return replace(base, verdict="warn", message=base.message or notes[0], notes=tuple(notes))


def _env_exec(ctx: _Context, base: Verdict, env_path: str, name: str) -> Verdict:
    """`env NAME` execvp()s NAME on PATH; its errors are printed by env itself."""
    busybox = _program_name(ctx.rootfs, env_path) == "busybox"

    def fail(failure: str, errno: str) -> Verdict:
        text = errno[0].upper() + errno[1:]
        msg = f"env: can't execute '{name}': {text}" if busybox else f"{env_path}: '{name}': {text}"
        return replace(base, verdict="fail", failure=failure, message=msg)

    found = _exec_path_lookup(ctx, name)
    if found is None:
        return fail("script-interpreter-missing", ENOENT)
    chain = _kernel(ctx, found, name, 1)
    if chain.errno is not None:
        return fail(chain.failure or "other", chain.errno)
    assert chain.elf is not None
    return _load(ctx, replace(base, program=chain.elf), chain.elf, chain.argv0)


def _exec_path_lookup(ctx: _Context, name: str) -> str | None:
    if "/" in name:
        return name if real_file(ctx.rootfs, name) else None
    for directory in ctx.path_dirs:
        candidate = posixpath.join(directory or ctx.cwd, name)
        real = real_file(ctx.rootfs, candidate)
        if real is not None and can_execute(ctx.rootfs, candidate, ctx.user):
            return candidate
    return None

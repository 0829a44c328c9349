"""Linkage analyser: runtime facts, the entrypoint verdict, every ELF binary's resolution, and the
findings of issue 3 §7 (`missing-interpreter` … `not-executable` as errors; `libc-mismatch`,
`ld-cache-stale`, `no-ca-certificates`, `elf-unreadable` as warnings), each with a concrete fix.
"""

from __future__ import annotations

import logging
import posixpath
from operator import itemgetter
from typing import TYPE_CHECKING

from imgaudit import entrypoint, ldconf, linkmemo
from imgaudit.elf import ElfFacts, RustFacts
from imgaudit.image import ImageConfig
from imgaudit.layers import EntryType
from imgaudit.loader import (
    LD_PRELOAD,
    PRELOAD_FILE,
    GlibcLoader,
    Loader,
    LoaderEnv,
    MuslLoader,
    Outcome,
    glibc_required,
    is_musl_loader,
    real_file,
)
from imgaudit.report import BinaryInfo, EntrypointVerdict, Finding, Incomplete, Report, RustInfo, Severity, TlsInfo
from imgaudit.rootfs import Node, RootFS
from imgaudit.rules import rule
from imgaudit.runtime import RuntimeFacts, runtime_facts, version_key
from imgaudit.users import UserNotFound, resolve_user

if TYPE_CHECKING:
    from imgaudit.audit import Loaded

# glibc release → (Debian codename, the rust image tag of that release); for "pin the builder".
DEBIAN_GLIBC = (("2.28", "buster"), ("2.31", "bullseye"), ("2.36", "bookworm"), ("2.41", "trixie"))
RUST_TRIPLES = {"x86_64": "x86_64-unknown-linux", "aarch64": "aarch64-unknown-linux", "i386": "i686-unknown-linux",
                "arm": "armv7-unknown-linux", "riscv64": "riscv64gc-unknown-linux"}
DOCKER_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i386": "386", "arm": "arm", "ppc64le": "ppc64le",
               "s390x": "s390x", "riscv64": "riscv64"}
GLIBC_LIBS = ("libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1", "ld-linux")
MAX_STALE_LISTED = 5
MAX_PRELOAD_FINDINGS = 16  # a preload list of a thousand missing names is one problem said a thousand times
log = logging.getLogger(__name__)


NOT_APPLICABLE = "ELF linkage not applicable: a {os} image (start-up checks cover Linux images)"


def analyse(loaded: Loaded, report: Report) -> None:
    rootfs, config = loaded.rootfs, loaded.image.config
    if config.platform.os == "windows":  # PE binaries and Windows' loader: nothing here applies (#67)
        report.entrypoint = EntrypointVerdict(entrypoint.argv_of(config),
                                              message=NOT_APPLICABLE.format(os=config.platform.os))
        return
    machine = _machine(config)
    facts = runtime_facts(rootfs, machine)
    report.runtime = facts.info()
    ep = entrypoint.verdict(loaded)
    fix = fix_for(ep, rootfs, config, facts)
    report.entrypoint = EntrypointVerdict(list(ep.argv), ep.path, ep.verdict, ep.failure, ep.message, fix)
    if ep.failure is not None:
        report.findings.append(Finding(ep.failure, Severity.ERROR, ep.message or ep.failure, ep.path,
                                       _layer(rootfs, ep.path), fix))
    report.findings.extend(_preload_findings(rootfs, ep, facts))
    for p in ep.resolution.problems if ep.resolution else ():
        if p.kind == "unknown" and p.object in (LD_PRELOAD, PRELOAD_FILE):  # more preloads than a walk maps
            report.incomplete.append(Incomplete(p.object, p.message))
    binaries(loaded, report, ep, facts)
    report.findings.extend(stale_cache(rootfs, facts, machine))


def _preload_findings(rootfs: RootFS, ep: entrypoint.Verdict, runtime: RuntimeFacts) -> list[Finding]:
    """A preload the entrypoint's loader skips: the program runs, without the allocator or tracer it was given.
    Said once, for the entrypoint; every other dynamic program of the image (a shell in `docker exec`) skips it
    too."""
    problems = [p for p in ep.resolution.problems if p.kind == "preload-missing"] if ep.resolution else []
    out = []
    for p in problems[:MAX_PRELOAD_FINDINGS]:
        path = p.object if p.object.startswith("/") else ep.program  # /etc/ld.so.preload, or the program's env
        out.append(Finding("preload-missing", Severity.WARNING, p.message, path, _layer(rootfs, path),
                           _preload_fix(p.library or "", p.object, rootfs, runtime)))
    if len(problems) > MAX_PRELOAD_FINDINGS:
        rest = len(problems) - MAX_PRELOAD_FINDINGS
        out.append(Finding("preload-missing", Severity.WARNING,
                           f"{rest} more preloaded libraries are not loaded either (the first "
                           f"{MAX_PRELOAD_FINDINGS} are listed)", ep.program, _layer(rootfs, ep.program),
                           rule("preload-missing").fix))
    return out


# Allocators people preload, and the package that ships each: (Debian, Alpine)
_PRELOAD_PACKAGES = {"libjemalloc.so.2": ("libjemalloc2", "jemalloc"),
                     "libmimalloc.so.2": ("libmimalloc2.0", "mimalloc2"),
                     "libtcmalloc.so.4": ("libgoogle-perftools4", None),
                     "libtcmalloc_minimal.so.4": ("libtcmalloc-minimal4", None)}


def _preload_fix(name: str, where: str, rootfs: RootFS, runtime: RuntimeFacts) -> str:
    base = posixpath.basename(name)
    elsewhere = _find_by_name(rootfs, base)
    if elsewhere is not None and elsewhere != name:  # e.g. Alpine's /usr/lib path in a Debian image
        return f"{base} is in the image at {elsewhere}: name that path in {where}"
    debian, alpine = _PRELOAD_PACKAGES.get(base, (None, None))
    musl = runtime.libc.family == "musl"
    package = alpine if musl else debian
    if package is not None:
        install = "apk add --no-cache" if musl else "apt-get install -y --no-install-recommends"
        return f"install {package} in the runtime stage (`{install} {package}`), or drop {base} from {where}"
    return rule("preload-missing").fix


def _machine(config: ImageConfig) -> str:
    return entrypoint.ARCH_MACHINES.get(config.platform.architecture, (config.platform.architecture,))[0]


def _layer(rootfs: RootFS, path: str | None) -> int | None:
    node = rootfs.get(path) if path else None
    return node.layer if node is not None and node.layer >= 0 else None


# -- every binary --------------------------------------------------------------------------------


def binaries(loaded: Loaded, report: Report, ep: entrypoint.Verdict, runtime: RuntimeFacts) -> None:
    rootfs, config = loaded.rootfs, loaded.image.config
    env = LoaderEnv.from_env(config.env, config.working_dir)
    entry_real = _real(rootfs, ep.program)
    loaders: dict[tuple[str, int, bool], Loader] = {}
    machine = _machine(config)
    memos = linkmemo.Memos(loaded.cache, [scan.digest for scan in loaded.scans]) if loaded.cache else None
    for node in _elf_nodes(rootfs):
        facts = node.entry.elf
        assert facts is not None
        if facts.error is not None:
            _unreadable(report, node, facts.error)
            continue
        role = "entrypoint" if node.path == entry_real else "library" if facts.elf_type == "dyn" else "executable"
        if role == "entrypoint":
            res = ep.resolution.outcome() if ep.resolution else None
        else:
            res = _resolve(rootfs, node, facts, env, runtime, loaders, machine, memos)
        info = _binary_info(node, facts, role, res, machine)
        if role == "entrypoint":
            info.verdict, info.failure = ep.verdict if ep.verdict != "unknown" else "ok", ep.failure
        report.binaries.append(info)
        report.findings.extend(_binary_findings(node, facts, info, res, runtime, config))
    if memos is not None:
        memos.save()
        log.debug("linkage: %d resolutions remembered from earlier runs, %d made", memos.hits, memos.misses)


def _elf_nodes(rootfs: RootFS) -> list[Node]:
    """In `walk()` order (by path), but only the ELF files are sorted."""
    found = [(path, node) for path, node in rootfs.nodes.items()
             if node.entry.elf is not None and node.entry.type is EntryType.FILE and not node.hardlink_of]
    return [node for _, node in sorted(found, key=itemgetter(0))]


def _real(rootfs: RootFS, path: str | None) -> str | None:
    if not path:
        return None
    node = rootfs.get(path)
    return node.path if node is not None else None


def _runs_on(facts: ElfFacts, machine: str) -> bool:
    return facts.machine == machine or (machine == "x86_64" and facts.machine == "i386")


def _resolve(rootfs: RootFS, node: Node, facts: ElfFacts, env: LoaderEnv, runtime: RuntimeFacts,
             loaders: dict[tuple[str, int, bool], Loader], machine: str, memos: linkmemo.Memos | None
             ) -> Outcome | None:
    """Executables as the kernel would start them; libraries with the image's own loader, and no
    symbol checks (the program that loads a library provides part of its scope). One loader per
    flavour, machine and class serves every binary, so what it learns of a file is learnt once; what
    a run learns of a binary is remembered for the next (linkmemo.py)."""
    if facts.interpreter is not None:
        # The kernel checks come first: a foreign machine or a missing interpreter never reach a loader.
        interp_real = real_file(rootfs, facts.interpreter)
        if not _runs_on(facts, machine) or interp_real is None:
            return None
        loader = _loader(rootfs, env, facts, is_musl_loader(rootfs, facts, interp_real), loaders)
        as_library = False
    elif not facts.needed or runtime.libc.family not in ("glibc", "musl"):
        return None
    else:
        loader = _loader(rootfs, env, facts, runtime.libc.family == "musl", loaders)
        as_library = True
    if memos is not None:
        return memos.resolve(rootfs, node, env, loader, as_library)
    return linkmemo.fresh(rootfs, node, env, loader, as_library)


def _loader(rootfs: RootFS, env: LoaderEnv, facts: ElfFacts, musl: bool,
            loaders: dict[tuple[str, int, bool], Loader]) -> Loader:
    key = (facts.machine, facts.elf_class, musl)
    loader = loaders.get(key)
    if loader is None:
        cls = MuslLoader if musl else GlibcLoader
        loader = loaders[key] = cls(rootfs, env, facts.machine, facts.elf_class)
    return loader


def _binary_info(node: Node, facts: ElfFacts, role: str, res: Outcome | None, machine: str) -> BinaryInfo:
    rust = _rust_info(facts.rust) if facts.rust else None
    verdict, failure = _binary_verdict(node, facts, res, machine)
    return BinaryInfo(
        path=node.path, role=role, machine=facts.machine, linking=facts.linking, libc=facts.libc,
        interpreter=facts.interpreter, needed=list(facts.needed), resolved=dict(res.resolved) if res else {},
        glibc_required=glibc_required(facts), rust=rust, stripped=facts.stripped, debug_bytes=facts.debug_bytes,
        verdict=verdict, failure=failure,
    )


def _rust_info(rust: RustFacts) -> RustInfo:
    tls = TlsInfo(rust.tls.library, rust.tls.version, rust.tls.roots) if rust.tls else None
    return RustInfo(rust.rustc_version, rust.rustc_commit, rust.target, tls)


def _binary_verdict(node: Node, facts: ElfFacts, res: Outcome | None, machine: str) -> tuple[str, str | None]:
    if not _runs_on(facts, machine):
        return "fail", "exec-format"
    if facts.interpreter is not None and res is None:
        return "fail", "missing-interpreter"
    fatal = res.fatal if res else None
    if fatal is not None:
        return "fail", fatal.kind
    if res is not None and (res.flavour == "musl" and facts.libc == "glibc"):
        return "warn", None
    return "ok", None


def _binary_findings(node: Node, facts: ElfFacts, info: BinaryInfo, res: Outcome | None,
                     runtime: RuntimeFacts, config: ImageConfig) -> list[Finding]:
    """Failures of binaries other than the entrypoint: errors for executables, warnings for libraries
    (a plugin's scope and search path come partly from the program that loads it)."""
    out = []
    role = info.role
    if role != "entrypoint" and info.failure is not None:
        message = res.fatal.message if res and res.fatal else _kernel_message(node, facts, info.failure)
        severity = Severity.WARNING if role == "library" else Severity.ERROR
        out.append(Finding(info.failure, severity, message, node.path, node.layer,
                           _binary_fix(info.failure, facts, res, runtime, config=config)))
    if res is not None and res.flavour == "musl" and facts.libc == "glibc":
        out.append(Finding("libc-mismatch", Severity.WARNING,
                           f"glibc binary runs through musl's loader ({facts.interpreter}), a compat layer",
                           node.path, node.layer,
                           _musl_target_fix(facts) if _is_rust(facts) else rule("libc-mismatch").fix))
    tls = _tls_without_roots(facts)
    if role != "library" and tls is not None and runtime.ca_bundle is None:
        out.append(Finding("no-ca-certificates", Severity.WARNING,
                           f"{tls} but the image has no CA bundle (/etc/ssl/certs/ca-certificates.crt)",
                           node.path, node.layer, rule("no-ca-certificates").fix))
    return out


def _kernel_message(node: Node, facts: ElfFacts, failure: str) -> str:
    if failure == "missing-interpreter":
        return f"exec {node.path}: no such file or directory (interpreter {facts.interpreter} is missing)"
    return f"exec {node.path}: exec format error ({facts.machine} binary)"


def _tls_without_roots(facts: ElfFacts) -> str | None:
    """What makes the file a TLS client that reads the system's root certificates, in words; None if
    it is none (or carries its own roots)."""
    rust_tls = facts.rust.tls if facts.rust else None
    if rust_tls is not None and rust_tls.roots == "system":
        version = f" {rust_tls.version}" if rust_tls.version else ""
        return f"embeds {rust_tls.library}{version}, which verifies servers with the system's CA certificates,"
    if any(n.startswith(("libssl.so", "libcrypto.so", "libgnutls.so")) for n in facts.needed):
        return "links OpenSSL"
    return None


def _unreadable(report: Report, node: Node, error: str) -> None:
    report.findings.append(Finding("elf-unreadable", Severity.WARNING, f"ELF file not analysed: {error}",
                                   node.path, node.layer))
    report.incomplete.append(Incomplete(node.path, f"ELF not analysed: {error}"))


# -- ld.so.cache staleness -----------------------------------------------------------------------


def stale_cache(rootfs: RootFS, runtime: RuntimeFacts, machine: str = "x86_64") -> list[Finding]:
    """Libraries in the dirs `ldconfig` scans (ld.so.conf and the system dirs) that the cache does not
    list: `ld.so` will not find them there (it reads only the cache). Only for glibc with a cache."""
    from imgaudit.loader import default_dirs, load_cache

    cache = load_cache(rootfs)
    if runtime.libc.family != "glibc" or cache is None:
        return []
    known = {e.soname for e in cache.entries}
    dirs = ldconf.conf_dirs(rootfs) + default_dirs(rootfs, machine, 32 if machine in ("i386", "arm") else 64)
    missing = sorted(_uncached(rootfs, dirs, known))
    if not missing:
        return []
    shown = ", ".join(missing[:MAX_STALE_LISTED]) + (" …" if len(missing) > MAX_STALE_LISTED else "")
    return [Finding("ld-cache-stale", Severity.WARNING,
                    f"/etc/ld.so.cache does not list {len(missing)} librar{'y' if len(missing) == 1 else 'ies'} "
                    f"in the dirs ldconfig scans: {shown}", "/etc/ld.so.cache", _layer(rootfs, "/etc/ld.so.cache"),
                    rule("ld-cache-stale").fix)]


def _uncached(rootfs: RootFS, dirs: list[str], known: set[str]) -> set[str]:
    out: set[str] = set()
    for directory, real in rootfs.real_dirs(dirs):
        for name in rootfs.listdir(real):
            node = rootfs.nodes.get(posixpath.join(real, name))
            elf = node.entry.elf if node is not None else None
            if elf is not None and elf.soname and elf.elf_type == "dyn" and elf.soname not in known:
                out.add(posixpath.join(directory, elf.soname))
    return out


# -- fixes ---------------------------------------------------------------------------------------


def fix_for(ep: entrypoint.Verdict, rootfs: RootFS, config: ImageConfig, runtime: RuntimeFacts) -> str | None:
    """Concrete advice for the entrypoint's failure (Rust-aware), or None when it starts."""
    if ep.failure is None:
        return None
    program = _facts(rootfs, ep.program)
    if ep.failure in ("missing-library", "glibc-version", "missing-symbol") and ep.resolution is not None:
        return _binary_fix(ep.failure, program, ep.resolution.outcome(), runtime, rootfs, config)
    handler = {
        "missing-interpreter": lambda: _interpreter_fix(program, runtime),
        "exec-format": lambda: _exec_format_fix(program, config, ep),
        "script-interpreter-missing": lambda: _script_fix(ep, runtime),
        "entrypoint-missing": lambda: _missing_fix(ep, rootfs, config, runtime),
        "not-executable": lambda: _not_executable_fix(ep, rootfs, config),
    }.get(ep.failure)
    if handler is not None:
        return handler()
    if ep.message and ep.message.startswith("unable to find user"):
        return rule("other").fix  # the catalogue's `other` fix is the one for a missing user
    if ep.message and ep.message.endswith(entrypoint.EPERM) and ep.program:
        return _capabilities_fix(ep.program, rootfs)
    return None


def _capabilities_fix(program: str, rootfs: RootFS) -> str | None:
    node = rootfs.get(program)
    caps = node.entry.capabilities if node is not None else None
    beyond = entrypoint.beyond_default_caps(caps)
    if not beyond:
        return None
    adds = entrypoint.cap_add_flags(beyond)
    return (f"{program} has file capabilities {caps}, and {', '.join(beyond)} is not in Docker's default set, so "
            f"the kernel refuses the exec: run it with `{adds}` (Kubernetes: securityContext.capabilities.add), "
            "or remove them (`setcap -r`), or set them without `e` if the program raises them itself")


def _facts(rootfs: RootFS, path: str | None) -> ElfFacts | None:
    node = rootfs.get(path) if path else None
    return node.entry.elf if node is not None else None


def _is_rust(facts: ElfFacts | None) -> bool:
    return facts is not None and facts.rust is not None


def _triple(facts: ElfFacts | None, libc: str) -> str:
    machine = facts.machine if facts else "x86_64"
    base = RUST_TRIPLES.get(machine, f"{machine}-unknown-linux")
    return f"{base}-{libc}{'eabihf' if machine == 'arm' else ''}"


def _musl_target_fix(facts: ElfFacts | None) -> str:
    if _is_rust(facts):
        triple = _triple(facts, "musl")
        return (f"build for musl: `rustup target add {triple} && cargo build --release --target {triple}` "
                f"(static by default), or use a glibc runtime (debian:bookworm-slim, gcr.io/distroless/cc-debian12)")
    return ("build against musl (on Alpine, or with musl-gcc; `-static` runs anywhere), or use a glibc runtime "
            "(debian:bookworm-slim, gcr.io/distroless/base-debian12)")


def _static_fix(facts: ElfFacts | None) -> str:
    if _is_rust(facts):
        triple = _triple(facts, "gnu")
        return (f"the image has no C library: build static with `RUSTFLAGS='-C target-feature=+crt-static' "
                f"cargo build --release --target {triple}` (or the {_triple(facts, 'musl')} target), "
                f"or use gcr.io/distroless/cc-debian12 as the runtime")
    return ("the image has no C library: link statically (`-static`), or use a runtime with glibc "
            "(gcr.io/distroless/base-debian12, debian:bookworm-slim)")


def _interpreter_fix(facts: ElfFacts | None, runtime: RuntimeFacts) -> str:
    interp = facts.interpreter if facts else "the ELF interpreter"
    if facts is not None and facts.libc == "glibc" and runtime.libc.family == "musl":
        return f"{interp} is glibc's loader and this image is musl (Alpine): " + _musl_target_fix(facts)
    if runtime.libc.family == "none":
        return _static_fix(facts)
    if facts is not None and facts.libc == "musl":
        return (f"{interp} is musl's loader and this image is {runtime.libc.family}: link statically "
                "(Rust's musl target is static unless `-C target-feature=-crt-static`), or use an Alpine runtime")
    return f"{interp} is not in the image: use a runtime with the binary's C library, or link statically"


def _binary_fix(failure: str, facts: ElfFacts | None, res: Outcome | None, runtime: RuntimeFacts,
                rootfs: RootFS | None = None, config: ImageConfig | None = None) -> str | None:
    if failure == "missing-interpreter":
        return _interpreter_fix(facts, runtime)
    if failure == "exec-format":
        return _arch_fix(facts, config)
    fatal = res.fatal if res else None
    if fatal is None:
        return None
    if failure == "missing-library":
        return _library_fix(fatal.library or "", facts, runtime, rootfs)
    if failure == "glibc-version":
        return _version_fix(fatal.version or "", fatal.library or "", facts, runtime)
    if res is not None and res.flavour == "musl" and facts is not None and facts.libc == "glibc":
        return f"musl is not glibc ({fatal.symbol} is glibc-only): " + _musl_target_fix(facts)
    return (f"`{fatal.symbol}` is not defined by the libraries the image provides (a different version than "
            "the binary was linked against): ship the matching library, or rebuild against the image's")


def _library_fix(lib: str, facts: ElfFacts | None, runtime: RuntimeFacts, rootfs: RootFS | None) -> str:
    elsewhere = _find_by_name(rootfs, lib) if rootfs is not None else None
    if elsewhere is not None:
        folder = posixpath.dirname(elsewhere)
        return (f"{lib} is in the image at {elsewhere} but not on the loader's search path: run `ldconfig` after "
                f"copying it (ld.so reads /etc/ld.so.cache, not ld.so.conf), or set ENV LD_LIBRARY_PATH={folder} "
                f"(or link with -Wl,-rpath,'$ORIGIN/…')")
    if lib.startswith(GLIBC_LIBS) and runtime.libc.family != "glibc":
        return _static_fix(facts) if runtime.libc.family == "none" else _musl_target_fix(facts)
    if lib == "libgcc_s.so.1":
        tip = " or build static (`-C target-feature=+crt-static`)" if _is_rust(facts) else ""
        return ("libgcc_s.so.1 (unwinding; every Rust gnu binary needs it) is not in distroless static/base: use "
                f"gcr.io/distroless/cc-debian12 (or install libgcc-s1){tip}")
    if lib.startswith(("libssl.so", "libcrypto.so")):
        return _openssl_fix(lib, facts, runtime)
    return (f"install the package that ships {lib} in the runtime stage (Debian: `apt-get install` it; "
            f"`apt-file search {lib}` names it), or COPY it from the build stage next to an $ORIGIN rpath")


def _openssl_fix(lib: str, facts: ElfFacts | None, runtime: RuntimeFacts) -> str:
    release = _debian_release(runtime.libc.version)
    text = (f"the binary links OpenSSL {lib.split('.so.', 1)[-1]} but the image has another (or none): "
            f"build on the runtime's release{f' ({release})' if release else ''} so both use the same OpenSSL, "
            "or install the matching libssl package")
    if _is_rust(facts):
        text += ("; in Rust avoid the system OpenSSL: `openssl = { version = \"0.10\", features = [\"vendored\"] }` "
                 "or rustls (e.g. reqwest with `default-features = false, features = [\"rustls-tls\"]`)")
    return text


def _version_fix(version: str, lib: str, facts: ElfFacts | None, runtime: RuntimeFacts) -> str:
    if version.startswith("GLIBC_"):
        need, have = version[6:], runtime.libc.version or "?"
        builder = _debian_release(have)
        newer = next((name for v, name in DEBIAN_GLIBC if version_key(v) >= version_key(need)), None)
        pin = (f"pin the builder to the runtime's release (`FROM rust:1-{builder}` or `debian:{builder}` as the "
               "build stage)") if builder else "build on a system with the runtime's glibc or older"
        text = f"the binary needs glibc {need}, the image has {have}: {pin}"
        if newer:
            text += f", or move the runtime to Debian {newer} (glibc ≥ {need})"
        if _is_rust(facts):
            text += f", or build static (`-C target-feature=+crt-static`, or the {_triple(facts, 'musl')} target)"
        return text
    if version.startswith(("OPENSSL_", "OPENSSL")):
        return _openssl_fix(posixpath.basename(lib), facts, runtime)
    if version.startswith(("GLIBCXX_", "CXXABI_")):
        return (f"{lib} is older than the libstdc++ the binary was built with (needs {version}): build on the "
                "runtime's release, or link with -static-libstdc++")
    return (f"{lib} in the image is older than the one the binary was linked against (needs {version}): "
            "ship the newer library, or rebuild against the image's")


def _debian_release(glibc: str | None) -> str | None:
    return next((name for v, name in DEBIAN_GLIBC if v == glibc), None)


def _arch_fix(facts: ElfFacts | None, config: ImageConfig | None) -> str:
    machine = facts.machine if facts else "?"
    plat = config.platform.architecture if config else "the image's platform"
    arch = DOCKER_ARCH.get(machine, machine)
    text = f"the binary is {machine} but the image is {plat}: build for the image's platform"
    if _is_rust(facts):
        text += f" (`cargo build --target {_triple(facts, 'gnu').replace(machine, _plat_machine(config))}`)"
    return text + f", or build the image for linux/{arch} (`docker buildx build --platform linux/{arch}`)"


def _plat_machine(config: ImageConfig | None) -> str:
    return _machine(config) if config else "x86_64"


def _exec_format_fix(facts: ElfFacts | None, config: ImageConfig, ep: entrypoint.Verdict) -> str:
    if facts is None:
        return (f"{ep.path} is neither an ELF binary nor a `#!` script: add a `#!` line (e.g. `#!/bin/sh`) "
                "or run it through its interpreter in ENTRYPOINT")
    return _arch_fix(facts, config)


def _script_fix(ep: entrypoint.Verdict, runtime: RuntimeFacts) -> str:
    line = ep.script or ""
    if "\r" in line:
        return (f"the `#!` line of {ep.path} ends with a carriage return (CRLF line endings): convert it to LF "
                "(`sed -i 's/\\r$//' FILE`, dos2unix, or `*.sh text eol=lf` in .gitattributes)")
    interp = line[2:].strip().split(" ")[0] if line else "the interpreter"
    if ep.message and "option" in ep.message and posixpath.basename(interp) == "env":
        gnu = " (busybox env has no -S: `apk add coreutils` brings GNU env's)" if "option: S" in ep.message else ""
        return (f"the kernel hands `{line[2:].strip()}` to env as one argument, which env refuses{gnu}: name the "
                "interpreter itself (`#!/usr/bin/python3 -u`), or use env with one program name")
    if ep.message and ("can't execute" in ep.message or ": '" in ep.message):
        name = ep.message.split("'")[1] if "'" in ep.message else "the program"
        return f"`{line}` runs `{name}`, which is not on the image's PATH: install it, or name a program the image has"
    shell = "" if runtime.shell else " (the image has no shell at all: distroless/static ones never do)"
    return f"{interp} is not in the image{shell}: install it, or change the `#!` line, or exec a binary directly"


def _missing_fix(ep: entrypoint.Verdict, rootfs: RootFS, config: ImageConfig, runtime: RuntimeFacts) -> str:
    argv = list(ep.argv)
    if len(argv) >= 2 and argv[1] == "-c" and argv[0] == "/bin/sh" and runtime.shell is None:
        return ("the shell form (`ENTRYPOINT cmd`/`CMD cmd`) runs /bin/sh, which this image lacks: use the exec "
                'form, e.g. ENTRYPOINT ["/app"]')
    if not argv:
        return "set ENTRYPOINT or CMD in the Dockerfile (exec form)"
    name = posixpath.basename(argv[0])
    elsewhere = _find_by_name(rootfs, name)
    hint = f" (there is {elsewhere}: use that path)" if elsewhere else ""
    if "/" not in argv[0]:
        path = config.env_value("PATH") or "the default PATH"
        return f"`{argv[0]}` is not in any PATH dir ({path}){hint}: use an absolute path or install it there"
    return (f"nothing at {argv[0]} in the final filesystem{hint}: check the COPY destination and .dockerignore, "
            "and that no later layer deletes it")


def _not_executable_fix(ep: entrypoint.Verdict, rootfs: RootFS, config: ImageConfig) -> str:
    refused = _interpreter_refused(ep, rootfs)
    culprit = ep.path if refused is None else refused
    if culprit == "":
        return f"the `#!` line of {ep.path} names no interpreter: name one (`#!/bin/sh`)"
    whose = f" (the interpreter {ep.path} asks for)" if culprit != ep.path else ""
    user = config.user or "root"
    try:
        who = resolve_user(rootfs, config.user)
    except UserNotFound:  # the verdict said so already
        who = None
    closed = entrypoint.search_denied(rootfs, culprit, who) if culprit and who else None
    if closed is not None:
        entry = rootfs.nodes[closed].entry
        return (f"{closed} (mode {entry.mode:04o}, owner {entry.uid}:{entry.gid}) is on the way to {culprit}{whose} "
                f"and USER {user} may not search it: `RUN chmod 755 {closed}` (or `COPY --chmod=755` of the directory; "
                "a checkout made with umask 077 gives 0700 directories)")
    node = rootfs.get(culprit) if culprit else None
    if node is not None and node.is_dir:
        where = "the `#!` line or PT_INTERP at" if whose else "ENTRYPOINT at"
        return f"{culprit}{whose} is a directory: point {where} the program inside it"
    mode = f"{node.entry.mode:04o}" if node is not None else "?"
    owner = f"{node.entry.uid}:{node.entry.gid}" if node is not None else "?"
    return (f"{culprit}{whose} is mode {mode} (owner {owner}) and not executable for USER {user}: "
            f"`COPY --chmod=755 …` or `RUN chmod 755 {culprit}` in the build")


def _interpreter_refused(ep: entrypoint.Verdict, rootfs: RootFS) -> str | None:
    """The `#!` interpreter or PT_INTERP the kernel could not open, when that is why the start failed."""
    if ep.message is None or not ep.message.startswith("exec "):
        return None  # runc's own check of argv[0] (`exec: "/app": …`), or env's of the program it runs
    if ep.script is not None:
        parsed = entrypoint.parse_shebang(ep.script.encode("utf-8", "surrogateescape"))  # the line, NUL-padded
        return parsed[0] if parsed is not None else None
    facts = _facts(rootfs, ep.program) if ep.program else None
    return facts.interpreter if facts is not None else None


def _find_by_name(rootfs: RootFS | None, name: str) -> str | None:
    """Another file of that name anywhere in the image (for "it is there, but elsewhere" advice)."""
    if rootfs is None or not name:
        return None
    for path, node in rootfs.nodes.items():
        if posixpath.basename(path) == name and node.type in (EntryType.FILE, EntryType.SYMLINK):
            return path
    return None

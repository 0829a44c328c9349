"""The rule catalogue: for every finding kind, what it means, the runtime error it predicts, the fix, how to ignore it.

SARIF's `tool.driver.rules`, JUnit's test cases and `docs/rules.md` (made by `scripts/gen-rule-docs`) are all
generated from this table, so a new rule is documented by adding it here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from imgaudit.report import Severity


class Category(str, Enum):
    STARTUP = "startup"  # will the entrypoint and the other binaries start (issue 3)
    SIZE = "size"  # where the bytes go (issue 4)
    BUDGET = "budget"  # limits set by the policy (issue 6)
    OTHER = "other"


@dataclass(frozen=True)
class Rule:
    id: str
    category: Category
    severity: Severity
    summary: str  # one line, no final stop
    description: str
    predicts: str | None  # the line the container would print, word for word; None for size and budget rules
    fix: str

    @property
    def name(self) -> str:
        """SARIF's `name`: the id in PascalCase (`missing-library` → `MissingLibrary`)."""
        return "".join(part.capitalize() for part in self.id.split("-"))

    def ignore_hint(self) -> str:
        return f"--ignore {self.id}  (or --ignore '{self.id}:/some/path/*'; ignore = [\"{self.id}\"] in config)"


def _r(rule_id: str, category: Category, severity: Severity, summary: str, description: str, predicts: str | None,
       fix: str) -> Rule:
    return Rule(rule_id, category, severity, summary, description, predicts, fix)


S, Z, B = Category.STARTUP, Category.SIZE, Category.BUDGET
E, W, N = Severity.ERROR, Severity.WARNING, Severity.INFO  # N: a note (info)

RULES: tuple[Rule, ...] = (
    # ---- start-up (linkage) ----
    _r("entrypoint-missing", S, E, "The entrypoint does not exist in the image",
       "argv[0] of Entrypoint + Cmd is neither an existing path nor a name found on the image's PATH.",
       'exec: "app": executable file not found in $PATH  /  exec: "/app": stat /app: no such file or directory',
       "COPY the binary to the path the ENTRYPOINT names, or fix the ENTRYPOINT/CMD (check WORKDIR and PATH)."),
    _r("not-executable", S, E, "The entrypoint is not executable",
       "The file exists but has no execute bit for the image's user, or is a directory; or the same holds for the "
       "interpreter it asks the kernel for (its `#!` line's, or PT_INTERP).",
       "exec /app: permission denied",
       "`chmod +x` it before COPY, or use `COPY --chmod=755`; check USER can read and execute it."),
    _r("exec-format", S, E, "The binary is for another machine or is not a known executable format",
       "The ELF machine or class does not match the image's platform (e.g. arm64 binary in an amd64 image), "
       "or the file is neither ELF nor a `#!` script.",
       "exec /app: exec format error",
       "Build for the image's platform (`--platform`, the right Rust/Go target), or add a `#!` line to scripts."),
    _r("missing-interpreter", S, E, "The ELF interpreter (dynamic loader) is not in the image",
       "PT_INTERP names a loader the image lacks — typically a glibc binary (`/lib64/ld-linux-x86-64.so.2`) "
       "in Alpine or distroless/static, or a musl binary on Debian.",
       "exec /app: no such file or directory",
       "Use a runtime with the binary's libc (Debian/distroless-cc for glibc, Alpine for musl), or build "
       "statically (Rust: `--target x86_64-unknown-linux-musl` or `-C target-feature=+crt-static`)."),
    _r("script-interpreter-missing", S, E, "The `#!` interpreter of a script is not in the image",
       "The script's `#!` line names a program the image lacks (or `/usr/bin/env NAME` with NAME not on PATH; "
       "a CRLF line ending makes the kernel look for `/bin/sh\\r`; or env refuses the line's options: the kernel "
       "passes `-S python3 -u` as one argument, which GNU env splits and busybox env rejects).",
       "exec /app/run.sh: no such file or directory  /  /usr/bin/env: 'python3': No such file or directory",
       "Install the interpreter, fix the `#!` line, or convert the script to LF line endings."),
    _r("missing-library", S, E, "A needed shared library is not found by the image's loader",
       "A DT_NEEDED library is not found along the loader's search path (RPATH, LD_LIBRARY_PATH, RUNPATH, "
       "ld.so.cache, default directories) inside the image.",
       "/app: error while loading shared libraries: libssl.so.3: cannot open shared object file: No such file "
       "or directory  /  (musl) Error loading shared library libssl.so.3: No such file or directory (needed by /app)",
       "Install the package providing the library in the runtime stage, copy it and run `ldconfig`, or link it "
       "statically (Rust: vendored OpenSSL or rustls; distroless/cc for libgcc_s)."),
    _r("glibc-version", S, E, "The binary needs a newer symbol version than the image's library defines",
       "A version need (`GLIBC_2.34`, `GLIBCXX_3.4.30`, `OPENSSL_3.0.0`, …) is not defined by the library the "
       "loader actually loads: the binary was built against a newer runtime than the image has.",
       "/app: /lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.34' not found (required by /app)",
       "Build on the same release as the runtime (e.g. `rust:1-bookworm` for `debian:bookworm-slim`), or use a "
       "newer runtime image."),
    _r("missing-symbol", S, E, "An undefined symbol is defined by no loaded library",
       "A non-weak undefined symbol is not exported by any object in the global scope; fatal at start-up for "
       "BIND_NOW objects, and always under musl.",
       "/app: symbol lookup error: /app: undefined symbol: foo  /  (musl) Error relocating /app: foo: symbol "
       "not found",
       "Ship the library version the binary was linked against, or rebuild against the runtime's libraries."),
    _r("libc-mismatch", S, W, "A glibc binary runs through a compatibility loader",
       "A glibc binary would run through a compat layer such as gcompat on musl; it may start, and then fail on "
       "a symbol the layer lacks.",
       "Error relocating /app: gnu_get_libc_version: symbol not found",
       "Build for musl (Rust: `x86_64-unknown-linux-musl`), or use a glibc-based runtime image."),
    _r("preload-missing", S, W, "A preloaded library (LD_PRELOAD, /etc/ld.so.preload) is not loaded",
       "A library that the image's `LD_PRELOAD` or `/etc/ld.so.preload` names (jemalloc, mimalloc, a tracer) is not "
       "found, or is not an object the loader can load. The program starts without it: glibc prints an error line, "
       "musl nothing. (A preloaded library whose own dependencies are missing is a `missing-library` error: the "
       "loader gives up then.)",
       "ERROR: ld.so: object 'libjemalloc.so.2' from LD_PRELOAD cannot be preloaded (cannot open shared object "
       "file): ignored.",
       "Install the library in the runtime stage (e.g. `libjemalloc2`), name it by a path that exists in the image, "
       "or drop the preload."),
    _r("ld-cache-stale", S, W, "/etc/ld.so.cache does not list libraries that are in the directories ldconfig scans",
       "Libraries were copied or installed into an ld.so.conf directory without running `ldconfig`. glibc's "
       "ld.so looks such directories up only through the cache, so a program needing one of them fails (unless "
       "RPATH, RUNPATH, LD_LIBRARY_PATH or a default directory finds it).",
       "/app: error while loading shared libraries: libfoo.so.1: cannot open shared object file: No such file "
       "or directory",
       "Run `ldconfig` in the Dockerfile step that copies or installs the libraries (`RUN ldconfig`)."),
    _r("no-ca-certificates", S, W, "A TLS client in an image without a CA bundle",
       "A binary links OpenSSL or embeds rustls, and the image has no CA certificate bundle: every HTTPS "
       "connection will fail verification. A Rust program's TLS crate is recognised by the source paths its "
       "panic locations keep (`rustls-0.23.12/src/...`, `openssl-0.10.x/src/...`, `vendor/rustls/src/...`); one "
       "that compiles its roots in (webpki-roots, seen by the root names in its data) needs no bundle and is "
       "not flagged. Rust binaries list what was found as `rust.tls` in the JSON report.",
       "certificate verify failed: unable to get local issuer certificate  /  invalid peer certificate: "
       "UnknownIssuer",
       "Install `ca-certificates` (or COPY /etc/ssl/certs/ca-certificates.crt from the build stage); for "
       "rustls, the `webpki-roots` feature (e.g. reqwest's `rustls-tls-webpki-roots`) compiles the roots in."),
    _r("elf-unreadable", S, W, "An ELF file could not be analysed",
       "The ELF parser failed or timed out on this file; it was skipped and the report is incomplete.",
       None,
       "Check the file is not truncated; report a bug with the file if it runs fine."),
    _r("other", S, E, "The container would fail to start for another reason",
       "A start-up failure outside the categories above: the image's USER (or its group) does not exist in "
       "/etc/passwd (/etc/group) or is a number past 2147483647, as dockerd resolves it with runc's GetExecUser, or "
       "`#!` scripts nest deeper than the kernel allows, an interpreter's path is a symlink loop, or the program has "
       "effective file capabilities outside Docker's default set (`cap_net_admin=ep`, `cap_ipc_lock=ep`), which the "
       "kernel refuses to exec with (`exec /app: operation not permitted`) unless `--cap-add` grants them.",
       "unable to find user app: no matching entries in passwd file",
       "Create the user in the image (`useradd`/`adduser`) or use a numeric USER uid:gid."),
    _r("too-many-layers", S, W, "More layers than Docker's layer store takes",
       "Docker's classic image store chains at most 125 layers (moby `layer/layer_store.go`: `maxLayerDepth = "
       "125`, \"to account for the 127 max in some graphdrivers plus the 2 additional layers used to create a "
       "rwlayer\"; overlay2 itself mounts at most 128 lower directories). Registering layer 126 fails, so the image "
       "cannot be pulled, loaded or run there (RELIABILITY.md #32; docker/for-linux#414, moby/buildkit#3067). "
       "containerd's snapshotters have other limits.",
       "failed to register layer: max depth exceeded",
       "Merge RUN steps, COPY in fewer steps, or squash the result (a multi-stage build: `COPY --from=build / /`)."),
    # ---- size (bloat) ----
    # Severity grows with the bytes at stake: info under 10 MB, a warning from there (checks/bloat.py).
    _r("apt-lists", Z, W, "apt package lists left in the image",
       "/var/lib/apt/lists holds the package indexes `apt-get update` downloaded; nothing at run time reads them.",
       None, "`rm -rf /var/lib/apt/lists/*` in the same RUN as `apt-get install`."),
    _r("apt-archives", Z, W, "apt's downloaded .deb files left in the image",
       "/var/cache/apt holds the downloaded packages and apt's caches.", None,
       "`apt-get clean` in the same RUN as `apt-get install` (or a `--mount=type=cache` for /var/cache/apt)."),
    _r("apk-cache", Z, W, "The apk package cache left in the image",
       "/var/cache/apk (or /etc/apk/cache) holds downloaded Alpine packages.", None,
       "`apk add --no-cache …` (or `rm -rf /var/cache/apk/*` in the same RUN)."),
    _r("pip-cache", Z, W, "The pip download cache left in the image",
       "~/.cache/pip holds wheels pip downloaded or built.", None,
       "`pip install --no-cache-dir …` (or `ENV PIP_NO_CACHE_DIR=1`, or a `--mount=type=cache`)."),
    _r("npm-cache", Z, W, "The npm or yarn cache left in the image",
       "~/.npm or ~/.cache/yarn holds downloaded package tarballs.", None,
       "`npm ci && npm cache clean --force` in one RUN (or a `--mount=type=cache,target=/root/.npm`)."),
    _r("cargo-registry", Z, W, "The Cargo registry and git checkouts left in the image",
       "~/.cargo/registry and ~/.cargo/git hold the sources of every crate the build downloaded.", None,
       "Build in a separate stage and COPY only the binary (multi-stage build), or use a `--mount=type=cache`."),
    _r("go-cache", Z, W, "The Go build and module caches left in the image",
       "~/.cache/go-build and go/pkg/mod hold the build cache and module sources.", None,
       "Build in a separate stage and COPY only the binary (multi-stage build)."),
    _r("cargo-target", Z, W, "A Cargo target/ directory left in the image",
       "A Cargo build directory (with its `.fingerprint` bookkeeping): intermediate objects, not the program.",
       None, "Build in a separate stage and COPY only target/release/APP (multi-stage build)."),
    _r("toolchain-rust", Z, W, "A Rust toolchain in a runtime image",
       "rustup or rustlib directories: the compiler and standard library sources are needed to build, not to run.",
       None, "Build in a separate stage and COPY only the result into a slim runtime image."),
    _r("toolchain-gcc", Z, W, "GCC's compiler passes in a runtime image",
       "/usr/lib/gcc or /usr/libexec/gcc: cc1, collect2 and their support files.", None,
       "Build in a separate stage and COPY only the result into a slim runtime image."),
    _r("toolchain-binaries", Z, W, "Compiler and build-tool binaries in a runtime image",
       "rustc, cargo, gcc, as, ld … on the PATH of the final image.", None,
       "Build in a separate stage and COPY only the result into a slim runtime image."),
    _r("dev-headers", Z, W, "C/C++ headers in a runtime image",
       "/usr/include or /usr/local/include: only a compiler reads them.", None,
       "Build in a separate stage; in the runtime stage install the runtime packages, not the `-dev` ones."),
    _r("static-archives", Z, W, "Static libraries (.a) in a runtime image",
       "Archives of object files: only the linker reads them.", None,
       "Build in a separate stage; in the runtime stage install the runtime packages, not the `-dev` ones."),
    _r("docs-man-locales", Z, W, "Documentation, man pages or translations in the image",
       "/usr/share/doc, man, info, locale: nothing in a container reads them.", None,
       "Debian/Ubuntu: before installing, add `path-exclude=/usr/share/doc/*`, "
       "`path-include=/usr/share/doc/*/copyright`, `path-exclude=/usr/share/man/*` and "
       "`path-exclude=/usr/share/locale/*` to /etc/dpkg/dpkg.cfg.d/excludes; Alpine: do not install `*-doc` "
       "packages; else `rm -rf` them in the same RUN (keep licence files)."),
    _r("unstripped-elf", Z, W, "ELF files carrying debug information",
       "Debug sections (.debug_*) in shipped binaries and libraries: useful to a debugger, dead weight in an image.",
       None, "Rust: `[profile.release] strip = true` (or `debug = false`); C/C++: link with -s or "
       "`strip --strip-debug` in the build stage."),
    _r("removed-later", Z, W, "Files added in one layer and removed in a later one",
       "A later `rm` (a whiteout, an opaque or replaced directory) hides the files but the bytes still ship in the "
       "earlier layer.", None,
       "Delete files in the same RUN that creates them, or build in a separate stage (multi-stage build)."),
    _r("rewritten-later", Z, W, "Files written in one layer and again in a later one",
       "chmod, chown, touch or an edit in a later layer copies the whole file: both copies ship.", None,
       "Set mode and owner where the file is added (`COPY --chmod=… --chown=…`) or in the same RUN."),
    _r("duplicate-entry", Z, W, "The same path twice in one layer",
       "A layer tar holds two entries for one path; the first is dead weight (the image-spec forbids this).", None,
       "Fix the tool that wrote the layer."),
    _r("duplicate-content", Z, W, "Identical content at several paths",
       "Files with the same sha256 at different paths of the final filesystem: every copy but one is waste.", None,
       "Keep one copy and hard-link or symlink the others, or COPY it once."),
    # ---- other: what the layers hold that an audit should see ----
    _r("file-capabilities", Category.OTHER, N, "A file carries file capabilities",
       "The file has a `security.capability` extended attribute (PAX `SCHILY.xattr.security.capability`): a "
       "process that executes it gains these capabilities, as `getcap` shows them. A value the kernel would "
       "refuse (wrong size or revision) is a warning, and so are effective capabilities outside Docker's default "
       "set (`cap_net_admin=ep`): the kernel refuses to exec such a file unless `--cap-add` grants them.", None,
       "Check the program needs them; remove them with `setcap -r FILE`, or grant them at run time "
       "(`docker run --cap-add …`)."),
    _r("capability-dropped", Category.OTHER, W, "A later layer wrote a file again without its capabilities",
       "A lower layer gave the file capabilities; a later layer replaced it (a chown, chmod or COPY writes a whole "
       "new copy, and chown clears capabilities) without them, so the program runs without the privilege it was "
       "given.", None,
       "Run `setcap` after the last step that writes the file, or set owner and mode where it is added "
       "(`COPY --chown=… --chmod=…`)."),
    _r("link-climbs-above-root", Category.OTHER, N, "A symlink target climbs above the root",
       "A relative target has more `..` than the link has parents (`../../../../etc/shadow`). The kernel stops `..` "
       "at `/` inside the container, so the link points inside the image; tools that resolve it on the host "
       "would escape.", None,
       "Make the target absolute, or relative without climbing above `/`."),
    _r("overlay-whiteout-in-tar", Category.OTHER, W, "An overlayfs whiteout (char 0:0) leaked into a layer tar",
       "overlayfs records a deletion in its upper directory as a character device 0:0. A layer made by tarring "
       "such a directory carries the device itself, not an OCI whiteout (`.wh.NAME`): a runtime extracts a "
       "device node there, and whatever the build deleted from the layers below is still in the image. "
       "imgaudit keeps it as a device, as the runtime does.", None,
       "Build the layer with a tool that writes OCI whiteouts (`.wh.` files): docker build, buildah, umoci, "
       "kaniko; do not tar an overlay upper directory."),
    # ---- budgets (policy) ----
    _r("budget-size", B, E, "The image is larger than --max-size",
       "The sum of all layers, uncompressed (what `docker images` shows), is over the budget.", None,
       "Shrink the image (see the size findings), or raise `--max-size` / `max-size`."),
    _r("budget-compressed-size", B, E, "The compressed image is larger than --max-compressed-size",
       "The sum of the compressed layer blobs (what a pull downloads) is over the budget.", None,
       "Shrink the image, or raise `--max-compressed-size` / `max-compressed-size`."),
    _r("budget-layers", B, E, "The image has more layers than --max-layers",
       "The number of filesystem layers is over the budget.", None,
       "Merge RUN steps or use a multi-stage build, or raise `--max-layers` / `max-layers`."),
    _r("budget-efficiency", B, E, "The image efficiency is under --min-efficiency (dive's lowestEfficiency)",
       "dive's efficiency (Σ smallest copy of each path ÷ Σ all copies) is under the minimum.", None,
       "Stop rewriting and deleting files across layers, or lower `--min-efficiency` / `lowestEfficiency`."),
    _r("budget-wasted", B, E, "Wasted bytes are over --max-wasted (dive's highestWastedBytes)",
       "dive's wasted bytes (every copy of every path written in two or more layers) are over the budget.", None,
       "Clean up in the same RUN step that creates files, or raise `--max-wasted` / `highestWastedBytes`."),
    _r("budget-user-wasted", B, E, "Wasted bytes share is over --max-user-wasted (dive's highestUserWastedPercent)",
       "Wasted bytes ÷ bytes of all layers but the first (a ratio 0–1) is over the maximum.", None,
       "Clean up in the same RUN step that creates files, or raise `--max-user-wasted` / "
       "`highestUserWastedPercent`."),
    _r("budget-reclaimable", B, E, "Reclaimable bytes are over --max-reclaimable",
       "Bytes in lower layers that nobody can see in the final filesystem (overwritten, removed, under "
       "removed or opaque directories) are over the budget.", None,
       "Delete files in the step that creates them, or use a multi-stage build; or raise `--max-reclaimable`."),
)

_BY_ID = {rule.id: rule for rule in RULES}


def rule(rule_id: str) -> Rule:
    """The catalogued rule, or a generic entry, so a rule added by an analyser never breaks an output."""
    return _BY_ID.get(rule_id) or Rule(rule_id, Category.OTHER, Severity.WARNING, rule_id.replace("-", " "),
                                       "Not yet described in the rule catalogue.", None,
                                       "See the finding's own fix.")


def rule_ids() -> list[str]:
    return [r.id for r in RULES]

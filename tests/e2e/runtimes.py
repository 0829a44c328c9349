"""Runtime base images and Docker helpers for imgaudit's oracle (end-to-end) tests.

The images are built by ``scripts/build-runtimes`` (see its docstring for what each one contains);
this module imports that script and adds thin ``docker build`` / ``docker run`` wrappers.

    tags = ensure_runtimes(["bookworm-cc", "alpine-3.20"])   # {"bookworm-cc": "imgaudit-rt/...", ...}
    rg = rust_binary("bullseye")                               # real /usr/bin/rg of bullseye's ripgrep
    tag = docker_build("imgaudit-e2e/rg:bullseye", tags["bookworm-cc"],
                       {"/usr/local/bin/rg": (rg, 0o755)}, ["/usr/local/bin/rg", "--version"])
    code, output = docker_run(tag)

Runtime names: ``<release>-<flavour>`` for release in bullseye/bookworm/trixie and flavour in
static/base/cc/slim, plus ``alpine-3.20``, ``alpine-3.12``, ``alpine-3.20-arm64``.

``require_docker()`` skips the calling test when no Docker daemon answers, unless ``IMGAUDIT_E2E=1``,
in which case it fails instead (CI must not silently skip the oracle).
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import json
import os
import posixpath
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "build-runtimes"
BUILD_TIMEOUT = 600
RUN_TIMEOUT = 60

FileSource = Path | bytes


@functools.cache
def _script() -> ModuleType:
    """The build-runtimes script, imported as a module (it has no .py suffix)."""
    loader = importlib.machinery.SourceFileLoader("imgaudit_build_runtimes", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module  # dataclasses look their module up there
    try:
        loader.exec_module(module)
    except BaseException:
        del sys.modules[loader.name]
        raise
    return module


def runtime_names() -> list[str]:
    """Every runtime the script knows (Debian flavours and Alpine)."""
    return list(_script().all_names())


def ensure_runtimes(names: list[str] | None = None) -> dict[str, str]:
    """Build/import the named runtimes (all when None) if missing; returns name -> image tag."""
    return dict(_script().ensure(names))


def rust_binary(release: str, name: str = "rg") -> Path:
    """A real Rust binary from the Debian package of ``release``: ``rg`` (ripgrep) or ``fd``
    (fd-find's ``fdfind``). bookworm's and trixie's ``rg`` also need ``libpcre2-8.so.0``."""
    return Path(_script().rust_binary(release, name))


def package_programs(release: str, pkg: str) -> dict[str, Path]:
    """The ELF programs of a Debian package's /usr/bin (``coreutils`` of ``trixie``, say), by name: unpacked once
    from the script's cached .deb into <cache>/programs/<release>/<pkg>/. Kept out of the script, whose source is
    its recipe hash: a change there rebuilds every runtime."""
    script = _script()
    builder = script.Builder(script.cache_dir(None), script._stderr_log)
    out = builder.cache / "programs" / release / pkg
    with script.locked(builder.cache):
        if not (out / ".done").exists():
            (deb,) = builder.debs(release, [pkg])
            out.mkdir(parents=True, exist_ok=True)
            for member, data in deb.members:
                directory, name = posixpath.split(script._norm(member.name))
                if directory == "usr/bin" and member.isfile() and data is not None and data[:4] == b"\x7fELF":
                    script.atomic_write(out / name, data)
                    (out / name).chmod(0o755)
            script.atomic_write(out / ".done", b"")
    return {path.name: path for path in sorted(out.iterdir()) if path.name != ".done"}


def docker_available() -> bool:
    try:
        res = subprocess.run(["docker", "info"], check=False, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def e2e_required() -> bool:
    return os.environ.get("IMGAUDIT_E2E") == "1"


def require_docker() -> None:
    """Skip the calling test without a Docker daemon, or fail when IMGAUDIT_E2E=1."""
    import pytest

    if docker_available():
        return
    if e2e_required():
        pytest.fail("IMGAUDIT_E2E=1 but `docker info` fails: no Docker daemon")
    pytest.skip("no Docker daemon (`docker info` fails); set IMGAUDIT_E2E=1 to make this an error")


def docker_build(
    tag: str,
    base: str,
    files: dict[str, tuple[FileSource, int]],
    entrypoint: list[str],
    env: dict[str, str] | None = None,
    user: str | None = None,
    cmd: list[str] | None = None,
) -> str:
    """``FROM base`` + the files (image path -> (source path or bytes, mode)) + config; returns tag.

    The legacy builder (docker 20.10) has no ``COPY --chmod``: modes are set on the files of the
    build context, which COPY preserves (owner becomes root). Files are grouped by destination
    directory, one ``COPY a b /dir/`` per directory, so existing directories (and merged-/usr
    symlinks such as ``/lib -> usr/lib``) of the base image are left alone. An empty entrypoint
    list leaves the base image's entrypoint as it is.
    """
    lines = [f"FROM {base}"]
    with tempfile.TemporaryDirectory(prefix="imgaudit-e2e-") as tmp:
        ctx = Path(tmp)
        groups: dict[str, list[str]] = {}
        for dest, (src, mode) in files.items():
            if not dest.startswith("/") or dest.endswith("/"):
                raise ValueError(f"destination must be an absolute file path: {dest!r}")
            directory, _, basename = dest.rpartition("/")
            directory = directory or "/"
            groups.setdefault(directory, []).append(basename)
            gdir = ctx / f"g{list(groups).index(directory)}"
            gdir.mkdir(exist_ok=True)
            target = gdir / basename
            if target.exists():
                raise ValueError(f"duplicate destination {dest!r}")
            target.write_bytes(src if isinstance(src, bytes) else Path(src).read_bytes())
            target.chmod(mode)
        for i, (directory, names) in enumerate(groups.items()):
            srcs = [f"g{i}/{n}" for n in names]
            lines.append(f"COPY {json.dumps([*srcs, directory.rstrip('/') + '/'])}")
        for key, value in (env or {}).items():
            lines.append(f"ENV {key}={json.dumps(value)}")
        if user is not None:
            lines.append(f"USER {user}")
        if entrypoint:
            lines.append(f"ENTRYPOINT {json.dumps(entrypoint)}")
        if cmd is not None:
            lines.append(f"CMD {json.dumps(cmd)}")
        (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")
        res = subprocess.run(
            ["docker", "build", "-q", "-t", tag, str(ctx)],
            check=False,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
        )
    if res.returncode != 0:
        dockerfile = "\n".join(lines)
        raise RuntimeError(f"docker build of {tag} failed:\n{dockerfile}\n{res.stdout}{res.stderr}")
    return tag


def docker_run(
    tag: str,
    args: list[str] | None = None,
    entrypoint: str | None = None,
    timeout: float = RUN_TIMEOUT,
) -> tuple[int, str]:
    """``docker run --rm`` the image; returns (exit code, stdout+stderr interleaved).

    Start-up failures come back as Docker prints them (exit code 127 "no such file", 126
    "permission denied"/"exec format error" ...). The container is removed even on timeout
    (then the exit code is -1).
    """
    name = f"imgaudit-e2e-{uuid.uuid4().hex[:12]}"
    cmd = ["docker", "run", "--rm", "--name", name, "--network", "none"]
    if entrypoint is not None:
        cmd += ["--entrypoint", entrypoint]
    cmd += [tag, *(args or [])]
    try:
        res = subprocess.run(
            cmd, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
        )
        return res.returncode, res.stdout
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return -1, out + f"\n[timed out after {timeout}s]"
    finally:
        subprocess.run(["docker", "rm", "-f", name], check=False, capture_output=True)

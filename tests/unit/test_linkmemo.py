"""linkmemo: a resolution remembered from one image is reused in another only when every answer it depended
on is the same there. The check is differential: an image is analysed with the memos of an earlier image and
without any, after a change to the files the loader consults, and the two reports' binaries and findings
must be equal. The runtime is this host's glibc, libraries and programs (read at test time, merged-/usr
like Debian 12), the app layer the fixtures with $ORIGIN runpaths; the changes are chosen by hand for each
kind of answer, and at random among the files the memos name."""

from __future__ import annotations

import gzip
import io
import logging
import os
import random
import re
import subprocess
import tarfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest

from imgaudit import audit
from imgaudit.cache import LINKS_SUFFIX, ScanCache
from imgaudit.checks import linkage
from imgaudit.report import Report
from tests.builders import DEFAULT_ENV, ImageSpec, Item, f, make_layer, sym, wh, write_oci_layout
from tests.unit.test_elf import ALPINE, CORPUS
from tests.unit.test_ldcache import OLD
from tests.unit.test_loader import ELF32_I386, FIX

HOST_PROGRAMS = ("/usr/bin/openssl", "/usr/bin/gzip", "/usr/bin/xz", "/usr/bin/curl", "/usr/bin/ls",
                 "/usr/bin/python3")
APP = {"app/bin/greet-app": "greet/bin/greet-app", "app/lib/libgreet.so.1": "greet/lib/libgreet.so.1",
       "app/bin/u8-app": "utf8/bin/u8-app", "app/lib/libu8.so.1": "utf8/lib/libu8.so.1"}
REMEMBERED = re.compile(r"linkage: (\d+) resolutions remembered from earlier runs, (\d+) made")

pytestmark = [
    pytest.mark.skipif(not (FIX / "utf8" / "bin" / "u8-app").exists(), reason="run scripts/build-fixtures"),
    pytest.mark.skipif(not Path("/usr/lib/x86_64-linux-gnu/libc.so.6").exists(),
                       reason="needs a merged-/usr x86_64 glibc host (Debian 12 and later)"),
]


def _app() -> list[Item]:
    return [f(name, (FIX / fixture).read_bytes(), 0o755 if "/bin/" in name else 0o644) for name, fixture in APP.items()]


@pytest.fixture(scope="module")
def host() -> tuple[dict[str, bytes], list[Item]]:
    """The host programs and every library `ldd` finds for them, by real path, and the links ldd's paths are."""
    files = {"/usr/lib64/ld-linux-x86-64.so.2"}
    for program in HOST_PROGRAMS:
        if os.path.exists(program):
            out = subprocess.run(["ldd", program], capture_output=True, text=True, check=False).stdout
            files.update([program, *re.findall(r"=> (/\S+)", out)])
    data, links = {}, []
    for path in sorted(files):
        real = os.path.realpath(path)
        data[real] = Path(real).read_bytes()
        name = os.path.join(os.path.dirname(real), os.path.basename(path))
        if name != real and path.startswith("/lib/"):  # libz.so.1 -> libz.so.1.2.13, beside it
            links.append(sym(name.lstrip("/"), os.path.basename(real)))
    return data, links


@pytest.fixture(scope="module")
def runtime(host: tuple[dict[str, bytes], list[Item]]) -> dict[str, bytes]:
    return host[0]


@pytest.fixture(scope="module")
def ld_cache(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """An ld.so.cache by the host's `ldconfig` for /opt/greet, the only way /opt/bin/greet-app finds its library."""
    root = tmp_path_factory.mktemp("ldconfig-root")
    (root / "etc").mkdir()
    (root / "etc" / "ld.so.conf").write_text("/opt/greet\n")
    (root / "opt" / "greet").mkdir(parents=True)
    (root / "opt" / "greet" / "libgreet.so.1").write_bytes((FIX / "greet/lib/libgreet.so.1").read_bytes())
    run = subprocess.run(["ldconfig", "-r", str(root), "-X"], capture_output=True, text=True, check=False)
    if run.returncode != 0:
        pytest.skip(f"ldconfig -r needs root (chroot): {run.stderr.strip()}")
    return (root / "etc" / "ld.so.cache").read_bytes()


def _base(host: tuple[dict[str, bytes], list[Item]], ld_cache: bytes) -> list[Item]:
    merged = [sym("bin", "usr/bin"), sym("lib", "usr/lib"), sym("lib64", "usr/lib64"), sym("sbin", "usr/sbin"),
              sym("usr/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")]
    files = [f(path.lstrip("/"), data, 0o755 if "/bin/" in path else 0o644) for path, data in host[0].items()]
    greet = [f("opt/bin/greet-app", (FIX / "greet/bin/greet-app").read_bytes(), 0o755),
             f("opt/greet/libgreet.so.1", (FIX / "greet/lib/libgreet.so.1").read_bytes()),
             f("etc/ld.so.cache", ld_cache)]
    return merged + files + host[1] + greet


def _linkage(loaded: audit.Loaded, caplog: pytest.LogCaptureFixture | None = None) -> tuple[list[Any], list[Any]]:
    """The binaries and findings of the linkage analysis."""
    report = Report(image=audit.image_info(loaded.image))
    linkage.analyse(loaded, report)
    return [asdict(b) for b in report.binaries], [asdict(x) for x in report.findings]


def _remembered(caplog: pytest.LogCaptureFixture) -> tuple[int, int]:
    """(resolutions from memos, resolutions made) of the last analysis, from its debug line."""
    found = [m for r in caplog.records if (m := REMEMBERED.search(r.getMessage()))]
    return int(found[-1].group(1)), int(found[-1].group(2))


def _load(where: Path, name: str, spec: ImageSpec) -> audit.Loaded:
    spec.compression = "tar"  # gzip at level 9 would take 5 s a load, for the host's 50 MB of libraries
    return audit.load(f"oci:{write_oci_layout(where / name, {f'{name}:1': spec})}")


def _compare(tmp_path: Path, caplog: pytest.LogCaptureFixture, base: list[bytes], change: list[Item],
             env: list[str] | None = None, name: str = "changed") -> tuple[int, int]:
    """Analyses `base` + `change` with the memos on disk and without any: equal, or the test fails.
    Returns (resolutions from memos, resolutions made) of the first."""
    spec = ImageSpec([*base, make_layer(change)] if change else base, env=env or [DEFAULT_ENV])
    loaded = _load(tmp_path, name, spec)
    assert loaded.cache is not None
    with caplog.at_level(logging.DEBUG, logger="imgaudit.checks.linkage"):
        with_memos = _linkage(loaded)
    fresh = _linkage(replace(loaded, cache=None))
    assert with_memos[0] == fresh[0], "binaries differ from a fresh analysis"
    assert with_memos[1] == fresh[1], "findings differ from a fresh analysis"
    return _remembered(caplog)


def _seeded(tmp_path_factory: pytest.TempPathFactory, layers: list[bytes]) -> tuple[Path, list[bytes]]:
    """A cache holding the scans of `layers` and the memos of every binary in them. The tests add memos of
    their own images to it: a memo must hold or step aside whatever else is there."""
    where = tmp_path_factory.mktemp("memos")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMGAUDIT_CACHE_DIR", str(where))
        _linkage(_load(where, "base", ImageSpec(layers)))
    return where, layers


@pytest.fixture(scope="module")
def memo_cache(host: tuple[dict[str, bytes], list[Item]], ld_cache: bytes,
               tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bytes]]:
    return _seeded(tmp_path_factory, [make_layer(_base(host, ld_cache)), make_layer(_app())])


@pytest.fixture
def base(memo_cache: tuple[Path, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    monkeypatch.setenv("IMGAUDIT_CACHE_DIR", str(memo_cache[0]))
    return memo_cache[1]


@pytest.fixture(scope="module")
def alpine_memo_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bytes]]:
    tarball = CORPUS / ALPINE["x86_64"]
    if not tarball.exists():
        pytest.skip(f"corpus {tarball} not present (set IMGAUDIT_CORPUS)")
    app = make_layer([f("app/hello", (FIX / "musl/hello-dynamic").read_bytes(), 0o755)])
    return _seeded(tmp_path_factory, [gzip.decompress(tarball.read_bytes()), app])


@pytest.fixture
def alpine(alpine_memo_cache: tuple[Path, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    monkeypatch.setenv("IMGAUDIT_CACHE_DIR", str(alpine_memo_cache[0]))
    return alpine_memo_cache[1]


CHANGES: dict[str, tuple[list[Item], list[str] | None]] = {
    "a library deleted": ([wh("usr/lib/x86_64-linux-gnu/libz.so.1")], None),
    "a library of another release": ([f("app/lib/libgreet.so.1", b"")], None),  # filled in below
    "a non-ELF file first on the runpath": ([f("app/lib/libc.so.6", "not a library\n")], None),
    "a 32-bit ELF where the runpath finds the library": ([f("app/lib/libgreet.so.1", ELF32_I386)], None),
    "the interpreter's link retargeted": ([sym("usr/lib64/ld-linux-x86-64.so.2", "/nowhere/ld.so")], None),
    "ld.so.cache deleted": ([wh("etc/ld.so.cache")], None),  # /opt/bin/greet-app: libgreet.so.1 not found
    "ld.so.cache of another system": ([f("etc/ld.so.cache", OLD)], None),
    "LD_LIBRARY_PATH set": ([], [DEFAULT_ENV, "LD_LIBRARY_PATH=/app/lib"]),
    "a system library shadowed by a symlink": ([sym("app/lib/libc.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6")],
                                               None),
    # a preload whose own dependency is missing fails every dynamic program
    "/etc/ld.so.preload names a library": ([f("etc/ld.so.preload", "libpreload.so\n")], None),  # + the library
    "LD_PRELOAD set": ([], [DEFAULT_ENV, "LD_PRELOAD=libpreload.so"]),  # + the library
}
PRELOADED = "usr/lib/x86_64-linux-gnu/libpreload.so"


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_changed_answer_is_never_answered_from_memory(change: str, base: list[bytes], tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    items, env = CHANGES[change]
    if change == "a library of another release":
        items = [f("app/lib/libgreet.so.1", (FIX / "greet/lib-old/libgreet.so.1").read_bytes())]
    if "preload" in change.lower():
        items = [*items, f(PRELOADED, (FIX / "preload/glibc/libpreload.so").read_bytes())]
    _compare(tmp_path, caplog, base, items, env)


def test_an_image_differing_elsewhere_reuses_every_resolution(base: list[bytes], tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """The case the memos are for: a new top layer that no search looks into. Only its own binary is resolved."""
    binaries = _linkage(_load(tmp_path, "plain", ImageSpec(base)))[0]  # its memos are the most recent now
    tool = f("srv/tool", (FIX / "glibc/hello-dynamic").read_bytes(), 0o755)
    remembered, made = _compare(tmp_path, caplog, base, [f("srv/index.html", "<p>hello</p>\n"), tool])
    assert (remembered, made) == (len([b for b in binaries if b["resolved"]]), 1)
    assert remembered >= 20


def test_memo_files_of_the_wrong_shape_or_torn_are_not_trusted(alpine: list[bytes], tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """A file whose digest checks out but whose memos are not our tuples (a bug of another version, a hand
    edit) is read as no memo; a torn one is dropped on read, as scans are, and written anew."""
    where = Path(os.environ["IMGAUDIT_CACHE_DIR"])
    cache = ScanCache(where)
    files = sorted(where.glob(f"links-*{LINKS_SUFFIX}"))
    assert files
    for path in files[:-1]:
        digest = path.name.removeprefix("links-").split(".")[0].replace("-", ":", 1)
        memos = cache.get_links(digest)
        assert memos
        cache.put_links(digest, {key: [(memo[0][0], 5, 6, 7)] for key, memo in memos.items()})
    torn = files[-1]
    torn.write_bytes(torn.read_bytes()[:-9])
    assert _compare(tmp_path, caplog, alpine, [f("srv/index.html", "hello\n")])[0] == 0
    torn_digest = torn.name.removeprefix("links-").split(".")[0].replace("-", ":", 1)
    assert cache.get_links(torn_digest)  # deleted on read, and written whole again by this run


def test_random_changes_to_the_files_the_memos_name(base: list[bytes], runtime: dict[str, bytes], tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Deletions, other content, links to another library, and copies planted earlier on a search path, of
    files the loader consults; 24 seeded changes, each compared with a fresh analysis."""
    libs = sorted(p for p in runtime if ".so" in p)
    targets = [*libs, "/app/lib/libgreet.so.1", "/app/lib/libu8.so.1", "/usr/lib64/ld-linux-x86-64.so.2"]
    rng = random.Random(7)
    remembered = 0
    for i in range(24):
        path, other = rng.choice(targets), rng.choice(libs)
        name = path.lstrip("/")
        kind = i % 4
        if kind == 0:
            change = [wh(name)]
        elif kind == 1:
            change = [f(name, runtime[other])]
        elif kind == 2:
            change = [sym(name, other)]
        else:
            change = [f(f"app/lib/{os.path.basename(path)}", runtime[other])]
        remembered += _compare(tmp_path, caplog, base, change, name=f"random-{i}")[0]
    assert remembered > 0  # the memos were consulted, and held where nothing they asked had changed


MUSL_LIBS = ("/lib/libz.so.1.3.1", "/lib/libssl.so.3", "/lib/libcrypto.so.3", "/lib/libapk.so.2.14.0",
             "/lib/ld-musl-x86_64.so.1")
MUSL_CHANGES: dict[str, list[Item]] = {
    "a library deleted": [wh("lib/libz.so.1.3.1")],
    "a path file without /lib": [f("etc/ld-musl-x86_64.path", "/usr/local/lib\n")],
    "a library with another's content": [f("lib/libssl.so.3", b"")],  # filled in below
    "a non-ELF file under a library's name": [f("lib/libz.so.1", "not a library\n")],
}


@pytest.mark.parametrize("change", list(MUSL_CHANGES))
def test_musl_answers_too(change: str, alpine: list[bytes], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """musl's loader: its path file is part of the loader's state, and it stops at the first file that exists."""
    items = MUSL_CHANGES[change]
    if change == "a library with another's content":
        items = [f("lib/libssl.so.3", _alpine_file(alpine[0], "lib/libz.so.1.3.1"))]
    _compare(tmp_path, caplog, alpine, items)


def test_musl_random_changes(alpine: list[bytes], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(11)
    remembered = 0
    for i in range(8):
        path, other = rng.choice(MUSL_LIBS), rng.choice(MUSL_LIBS)
        change = [wh(path.lstrip("/"))] if i % 2 else [f(path.lstrip("/"), _alpine_file(alpine[0], other.lstrip("/")))]
        remembered += _compare(tmp_path, caplog, alpine, change, name=f"alpine-random-{i}")[0]
    assert remembered > 0


def _alpine_file(layer: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        member = tar.extractfile(f"./{name}")
        assert member is not None
        return member.read()

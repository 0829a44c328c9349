"""The daemon is the judge of layer content (RELIABILITY.md #32, #66): file capabilities set by a real
`docker build` (`RUN setcap …`) as the container's own `getcap` prints them, and the layer count at which
`docker load` refuses an image ("max depth exceeded")."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.builders import ImageSpec, f, make_layer, write_docker_archive
from tests.e2e.runtimes import docker_run, ensure_runtimes, require_docker

REPO = Path(__file__).resolve().parents[2]
LIBCAP = Path("/lib/x86_64-linux-gnu/libcap.so.2")


def imgaudit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imgaudit", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300, check=False)


def _rmi(tag: str) -> None:
    subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)


def test_66_capabilities_from_a_real_build_match_getcap_in_the_container(tmp_path: Path) -> None:
    """The host's libcap tools (bookworm's, like the runtime) go into a bookworm image whose build runs setcap;
    the daemon's own layer diff carries the xattr, and getcap inside the container is the oracle."""
    require_docker()
    tools = [shutil.which("setcap"), shutil.which("getcap")]
    if None in tools or not LIBCAP.exists():
        pytest.skip("libcap2-bin (setcap, getcap) is not installed on the host")
    base = ensure_runtimes(["bookworm-slim"])["bookworm-slim"]
    for tool in tools:
        shutil.copy(str(tool), tmp_path)
    shutil.copy(LIBCAP, tmp_path / "libcap.so.2")
    shutil.copy("/bin/true", tmp_path / "app")
    spec = "cap_net_bind_service,cap_net_raw=ep"
    (tmp_path / "Dockerfile").write_text(
        f"FROM {base}\nCOPY getcap setcap /usr/local/sbin/\nCOPY libcap.so.2 /usr/lib/x86_64-linux-gnu/\n"
        f"COPY app /usr/local/bin/app\nRUN setcap {spec} /usr/local/bin/app\n"
        "COPY app /usr/local/bin/chowned\nRUN setcap cap_kill=ep /usr/local/bin/chowned\n"
        "RUN chown 1:1 /usr/local/bin/chowned\nENTRYPOINT [\"/usr/local/bin/app\"]\n")
    tag = "imgaudit-e2e/caps:latest"
    built = subprocess.run(["docker", "build", "-q", "-t", tag, str(tmp_path)], capture_output=True, text=True,
                           timeout=600, check=False, env={**os.environ, "DOCKER_BUILDKIT": "0"})
    assert built.returncode == 0, built.stderr
    try:
        code, printed = docker_run(tag, ["/usr/local/bin/app", "/usr/local/bin/chowned"], entrypoint="getcap")
        assert code == 0, printed
        oracle = dict(line.split(" ", 1) for line in printed.splitlines() if line.strip())
        assert oracle == {"/usr/local/bin/app": spec}  # chown cleared the other one's capability

        rows = {r["path"]: r for r in json.loads(imgaudit("ls", "--format", "json", f"docker-daemon:{tag}").stdout)}
        assert rows["/usr/local/bin/app"]["capabilities"] == oracle["/usr/local/bin/app"]
        assert rows["/usr/local/bin/chowned"]["capabilities"] is None
        run = imgaudit("inspect", "--format", "json", "--fail-on", "never", f"docker-daemon:{tag}")
        report = json.loads(run.stdout)
        assert report["entrypoint"]["capabilities"] == spec
        dropped = [x for x in report["findings"] if x["rule"] == "capability-dropped"]
        assert [x["path"] for x in dropped] == ["/usr/local/bin/chowned"], report["findings"]
    finally:
        _rmi(tag)


def test_32_docker_loads_125_layers_and_refuses_126() -> None:
    """moby's layer store chains at most 125 layers (layer/layer_store.go maxLayerDepth): imgaudit flags the
    image `docker load` refuses, and only that one."""
    require_docker()
    with tempfile.TemporaryDirectory(prefix="imgaudit-e2e-") as tmp:
        for count in (126, 125):
            tag = f"imgaudit-e2e/layers:{count}"
            layers = [make_layer([f(f"l{i}", str(i))]) for i in range(count)]
            archive = write_docker_archive(Path(tmp) / f"{count}.tar", {tag: ImageSpec(layers, entrypoint=["/l0"])})
            report = json.loads(imgaudit("inspect", "--format", "json", "--fail-on", "never",
                                         f"docker-archive:{archive}").stdout)
            flagged = [x["message"] for x in report["findings"] if x["rule"] == "too-many-layers"]
            loaded = subprocess.run(["docker", "load", "-i", str(archive)], capture_output=True, text=True,
                                    timeout=600, check=False)
            _rmi(tag)
            if count == 126:
                assert loaded.returncode != 0 and "max depth exceeded" in loaded.stderr, loaded.stderr
                assert len(flagged) == 1 and "max depth exceeded" in flagged[0]
            else:
                assert loaded.returncode == 0, loaded.stderr
                assert flagged == []


def test_63_a_char_0_0_whiteout_in_a_layer_tar_deletes_nothing_in_docker(tmp_path: Path) -> None:
    """The daemon extracts an overlayfs-style whiteout (a char 0:0 device in the tar) as a device node: the
    file below is not deleted but replaced by a device, as imgaudit's finding says."""
    from fuzz import hostile as h

    require_docker()
    base = ensure_runtimes(["alpine-3.20"])["alpine-3.20"]
    upper = h.tar_of(h.member("etc/motd", typeflag=b"3", mode=0), h.member("etc/.wh.issue"))
    (tmp_path / "upper.tar").write_bytes(upper)
    (tmp_path / "Dockerfile").write_text(f"FROM {base}\nADD upper.tar /\n")
    tag = "imgaudit-e2e/overlay-whiteout:latest"
    built = subprocess.run(["docker", "build", "-q", "-t", tag, str(tmp_path)], capture_output=True, text=True,
                           timeout=600, check=False, env={**os.environ, "DOCKER_BUILDKIT": "0"})
    assert built.returncode == 0, built.stderr
    try:
        code, printed = docker_run(tag, ["-c", "stat -c %F /etc/motd; test -e /etc/issue || echo issue-gone"],
                                   entrypoint="/bin/sh")
        assert code == 0, printed
        assert printed.split() == ["character", "special", "file", "issue-gone"]  # the OCI whiteout did delete
        report = json.loads(imgaudit("inspect", "--format", "json", "--fail-on", "never", tag).stdout)
        found = [(x["rule"], x["path"]) for x in report["findings"] if x["rule"] == "overlay-whiteout-in-tar"]
        assert found == [("overlay-whiteout-in-tar", "/etc/motd")]
    finally:
        _rmi(tag)

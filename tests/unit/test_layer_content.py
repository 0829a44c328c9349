"""Hostile layer content reported honestly (RELIABILITY.md #30, #32, #66, #67, #78), through real tar bytes and
the real command line. File capabilities are checked against libcap's own `setcap`/`getcap` where installed."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fuzz import hostile as h
from imgaudit import cache as cache_mod
from imgaudit.errors import LimitExceeded
from imgaudit.layers import scan_layer
from imgaudit.scanner import promised_compression
from imgaudit.xattrs import MAX_XATTRS, cap_to_text, capability_sets, decode_capability
from tests.builders import OCI_LAYER_GZIP, ImageSpec, f, make_layer, sym, write_oci_layout

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(os.environ.get("IMGAUDIT_FIXTURES_OUT") or REPO / "fixtures" / "build")
CAP = "security.capability"
# vfs_cap_data values written by setcap 2.66 and what getcap 2.66 printed for them (revision 2 unless noted).
GETCAP = {
    "0100000200040000000000000000000000000000": "cap_net_bind_service=ep",
    "0000000200300000000000000000000000000000": "cap_net_admin,cap_net_raw=p",
    "0000000200200000001000000000000000000000": "cap_net_admin=i cap_net_raw+p",
    "00000002c0000000c10000000000000000000000": "cap_setgid,cap_setuid=ip cap_chown+i",
    "01000002ffffffff00000000ff01000000000000": "=ep",
    "00000002ffffdfff00000000ff01000000000000": "=p cap_sys_admin-p",
    "00000002ffffffffdfffffffff010000ff010000": "=ip cap_kill-i",
    "010000020000000000000000c001000000000000": "cap_perfmon,cap_bpf,cap_checkpoint_restore=ep",
    "0100000300040000000000000000000000000000e8030000": "cap_net_bind_service=ep [rootid=1000]",  # revision 3
    "010000010020000000000000": "cap_net_raw=ep",  # revision 1: one 32-bit word per set
}
NET_BIND = bytes.fromhex("0100000200040000000000000000000000000000")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imgaudit", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120, check=False)


def inspect_json(ref: str) -> dict[str, Any]:
    run = cli("inspect", "--format", "json", "--fail-on", "never", ref)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    report: dict[str, Any] = json.loads(run.stdout)
    return report


def layout(tmp_path: Path, layers: list[bytes], **kw: Any) -> str:
    root = write_oci_layout(tmp_path / "layout", {"latest": ImageSpec(layers, compression="tar", **kw)})
    return f"oci:{root}"


# -- #66 capabilities decoded as getcap prints them ---------------------------------------------------------


@pytest.mark.parametrize("raw", GETCAP)
def test_66_capabilities_read_as_getcap_prints_them(raw: str) -> None:
    assert decode_capability(bytes.fromhex(raw)) == GETCAP[raw]


@pytest.mark.parametrize("raw", [b"", b"\x01\x00", NET_BIND[:-1], NET_BIND + b"\0", b"\0\0\0\x07" + b"\0" * 16,
                                 b"\x01\0\0\x01" + b"\0" * 16, b"\xff" * 10_000])
def test_66_a_value_the_kernel_refuses_is_marked_invalid_and_bounded(raw: bytes) -> None:
    text = decode_capability(raw)
    assert text.startswith("invalid (") and len(text) < 80, text


def test_66_the_sets_come_back_from_the_text_a_scan_keeps() -> None:
    """The verdict reads the permitted set and the effective flag back from the getcap text (what a scan and its
    cache keep), for any value: named and unnamed bits, every flag combination."""
    rng = random.Random(66)
    for _ in range(5000):
        shape = rng.randrange(2)
        few = [sum(1 << rng.randrange(bits) for _ in range(rng.randrange(4))) for bits in (41, 64)]
        permitted, inheritable = (rng.getrandbits(64), rng.getrandbits(64)) if shape == 0 else few
        effective = rng.random() < 0.5
        text = cap_to_text(permitted, inheritable, effective=effective)
        assert capability_sets(text) == (permitted, inheritable, effective and bool(permitted | inheritable)), text
    assert capability_sets("invalid (3 bytes)") is None
    assert capability_sets("cap_net_admin=ep [rootid=1000]") is None  # another namespace's root: ignored


def test_66_capabilities_match_the_real_getcap(tmp_path: Path) -> None:
    """The oracle: libcap writes the xattr and prints it; imgaudit reads the same bytes."""
    if not (shutil.which("setcap") and shutil.which("getcap")):
        pytest.skip("libcap2-bin (setcap, getcap) is not installed")
    target = tmp_path / "prog"
    target.write_bytes(b"")
    specs = ["cap_net_bind_service=ep", "cap_net_raw,cap_net_admin+p", "cap_net_raw=p cap_net_admin=i", "all=ep",
             "all=p cap_sys_admin-p", "cap_setuid,cap_setgid=ip cap_chown+i", "cap_bpf,cap_checkpoint_restore=ep"]
    for spec in specs:
        done = subprocess.run(["setcap", spec, str(target)], capture_output=True, text=True, check=False)
        if done.returncode:
            pytest.skip(f"setcap cannot write here: {done.stderr.strip()}")
        printed = subprocess.run(["getcap", str(target)], capture_output=True, text=True, check=True).stdout
        assert decode_capability(os.getxattr(target, CAP)) == printed.split(" ", 1)[1].strip(), spec


# -- #66 recorded per entry, carried through the cache, the merge and the outputs ----------------------------


def test_66_xattrs_are_recorded_per_entry_and_round_trip_through_the_cache() -> None:
    everything = bytes.fromhex("01000002ffffffff00000000ff01000000000000")  # not UTF-8: hdrcharset=BINARY
    layer = make_layer([f("usr/bin/ping", b"p", 0o755, xattrs={CAP: everything, "user.origin": b"apt"}),
                        f("etc/conf", b"c", xattrs={"security.selinux": b"system_u:object_r:etc_t:s0\0"}),
                        f("plain", b"x")])
    assert b"hdrcharset=BINARY" in layer
    scan = scan_layer(io.BytesIO(layer))
    entries = {e.path: e for e in scan.entries}
    assert entries["/usr/bin/ping"].xattrs == ((CAP, "=ep"), ("user.origin", "apt"))
    assert entries["/usr/bin/ping"].capabilities == "=ep"
    assert entries["/etc/conf"].xattrs == (("security.selinux", "0x" + b"system_u:object_r:etc_t:s0\0".hex()),)
    assert entries["/plain"].xattrs == () and entries["/plain"].capabilities is None
    assert cache_mod.decode(cache_mod.encode(scan)) == scan
    assert cache_mod.FORMAT_VERSION >= 2  # entries changed shape: an older entry must read as a miss


def test_66_100000_xattrs_on_one_file_stay_bounded_and_are_reported() -> None:
    def layer_of(count: int) -> bytes:
        records = [(b"SCHILY.xattr.user.k%06d" % i, b"v") for i in range(count)]
        return h.tar_of(h.pax(records), h.member("many", b"x"), h.pax({b"SCHILY.xattr." + CAP.encode(): NET_BIND}),
                        h.member("capped", b"y"))

    # 100 000 records take 3 MB: over the 1 MiB a PAX header may hold in Go's archive/tar, which the runtimes
    # apply layers with, so imgaudit refuses it as they do (#60, tests/unit/test_tar_differential.py)
    with pytest.raises(LimitExceeded, match="PAX header of 3100000 bytes at offset 0 is over the 1 MiB cap"):
        scan_layer(io.BytesIO(layer_of(100_000)))
    layer = layer_of(33_000)
    assert len(layer) > 1_000_000  # just under the cap, so it is read
    started = time.perf_counter()
    scan = scan_layer(io.BytesIO(layer))
    assert time.perf_counter() - started < 10
    entries = {e.path: e for e in scan.entries}
    assert len(entries["/many"].xattrs) == MAX_XATTRS and entries["/capped"].capabilities == "cap_net_bind_service=ep"
    assert [s.reason for s in scan.skipped] == [f"{33_000 - MAX_XATTRS} more extended attributes not recorded "
                                                f"(cap: {MAX_XATTRS} per entry)"]


def test_66_a_10_mb_xattr_is_over_the_extension_header_cap() -> None:
    layer = h.tar_of(h.pax({b"SCHILY.xattr.user.big": b"v" * (10 << 20)}), h.member("a", b"x"))
    with pytest.raises(LimitExceeded, match="exceed the 8 MiB cap"):
        scan_layer(io.BytesIO(layer))


def test_66_capabilities_in_ls_and_inspect(tmp_path: Path) -> None:
    app = (FIXTURES / "glibc" / "hello-static-pie").read_bytes()
    net_admin = bytes.fromhex("0100000200100000000000000000000000000000")  # cap_net_admin=ep
    base = make_layer([f("app", app, 0o755, xattrs={CAP: NET_BIND}),
                       f("usr/sbin/vpn", app, 0o755, xattrs={CAP: net_admin}),
                       f("usr/bin/ping", b"p", 0o755, xattrs={CAP: bytes.fromhex(next(iter(GETCAP))[:8] + "00")}),
                       f("usr/bin/tool", b"t", 0o755, xattrs={CAP: NET_BIND})])
    chowned = make_layer([f("usr/bin/tool", b"t", 0o755)])  # a later chown: the whole file again, no capability
    ref = layout(tmp_path, [base, chowned], entrypoint=["/app"])
    rows = {row["path"]: row for row in json.loads(cli("ls", "--format", "json", ref).stdout)}
    assert rows["/app"]["capabilities"] == "cap_net_bind_service=ep" and rows["/app"]["xattrs"] == {
        CAP: "cap_net_bind_service=ep"}
    assert rows["/usr/bin/tool"]["capabilities"] is None and rows["/usr/bin"]["xattrs"] == {}
    text = cli("ls", ref).stdout
    assert any(line.endswith("/app  [cap_net_bind_service=ep]") for line in text.splitlines()), text

    report = inspect_json(ref)
    assert report["entrypoint"]["capabilities"] == "cap_net_bind_service=ep"
    assert [b["capabilities"] for b in report["binaries"] if b["path"] == "/app"] == ["cap_net_bind_service=ep"]
    found = {(x["rule"], x["path"]): x for x in report["findings"]}
    assert found["file-capabilities", "/app"]["severity"] == "info"
    assert found["file-capabilities", "/usr/bin/ping"]["severity"] == "warning"  # 5 bytes: refused by the kernel
    assert "invalid" in found["file-capabilities", "/usr/bin/ping"]["message"]
    vpn = found["file-capabilities", "/usr/sbin/vpn"]  # outside Docker's default set: its exec is refused
    assert vpn["severity"] == "warning" and "operation not permitted" in vpn["message"]
    assert "--cap-add NET_ADMIN" in vpn["fix"]
    dropped = found["capability-dropped", "/usr/bin/tool"]
    assert dropped["layer"] == 1 and "cap_net_bind_service=ep from layer 0" in dropped["message"]
    assert ("file-capabilities", "/usr/bin/tool") not in found
    table = cli("inspect", "--fail-on", "never", ref).stdout
    assert "capabilities cap_net_bind_service=ep" in table and "capability-dropped" in table


def test_66_capabilities_set_again_in_a_later_layer_are_not_reported_lost(tmp_path: Path) -> None:
    first = make_layer([f("tool", b"t", 0o755, xattrs={CAP: NET_BIND})])
    again = make_layer([f("tool", b"t2", 0o755)])
    restored = make_layer([f("tool", b"t3", 0o755, xattrs={CAP: NET_BIND})])
    rules = [x["rule"] for x in inspect_json(layout(tmp_path, [first, again, restored]))["findings"]]
    assert "capability-dropped" not in rules and "file-capabilities" in rules


# -- #30 media type against magic bytes ----------------------------------------------------------------------


def test_30_a_media_type_that_lies_is_one_warning_and_the_magic_decides(tmp_path: Path) -> None:
    assert [promised_compression(t) for t in (OCI_LAYER_GZIP, "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.docker.image.rootfs.diff.tar", "application/vnd.docker.image.rootfs.diff.tar.gzip", "")
            ] == ["gzip", "zstd", "tar", "gzip", None]
    plain = make_layer([f("etc/hello", b"hi")])
    ref = layout(tmp_path, [plain, make_layer([f("b", b"b")])])  # compression="tar" with gzip media types below
    index = json.loads((tmp_path / "layout" / "index.json").read_text())
    blobs = tmp_path / "layout" / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_text())
    assert [x["mediaType"] for x in manifest["layers"]] == ["application/vnd.oci.image.layer.v1.tar"] * 2
    _retype(tmp_path / "layout", 0, OCI_LAYER_GZIP)
    run = cli("inspect", "--format", "json", "--fail-on", "never", ref)
    assert run.returncode == 0, run.stderr
    warnings = run.stderr.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("imgaudit: warning: layer 1/2 "), run.stderr
    assert "says gzip but the bytes are tar: read by their magic bytes" in warnings[0]
    assert json.loads(run.stdout)["complete"] is True
    rows = json.loads(cli("ls", "--format", "json", ref).stdout)
    assert "/etc/hello" in {row["path"] for row in rows}


def test_30_a_truthful_media_type_and_an_empty_blob_give_no_warning(tmp_path: Path) -> None:
    ref = layout(tmp_path, [make_layer([f("a", b"a")]), b""])
    _retype(tmp_path / "layout", 1, OCI_LAYER_GZIP)  # a 0-byte blob is an empty layer whatever its type (#34)
    run = cli("inspect", "--format", "json", "--fail-on", "never", ref)
    assert run.returncode == 0 and run.stderr == "", run.stderr


def _retype(root: Path, index: int, media_type: str) -> None:
    """Rewrites the manifest with another media type for layer `index` (and the index to the new manifest)."""
    blobs = root / "blobs" / "sha256"
    doc = json.loads((root / "index.json").read_text())
    old = blobs / doc["manifests"][0]["digest"][7:]
    manifest = json.loads(old.read_text())
    manifest["layers"][index]["mediaType"] = media_type
    body = json.dumps(manifest).encode()
    old.unlink()
    (blobs / h.sha(body)[7:]).write_bytes(body)
    doc["manifests"][0].update(digest=h.sha(body), size=len(body))
    (root / "index.json").write_text(json.dumps(doc))


# -- #32 more layers than Docker takes -----------------------------------------------------------------------


@pytest.mark.parametrize(("count", "flagged"), [(125, False), (126, True)])
def test_32_more_than_125_layers_is_a_finding(tmp_path: Path, count: int, flagged: bool) -> None:
    layers = [make_layer([f(f"l{i}", str(i))]) for i in range(count)]
    report = inspect_json(layout(tmp_path, layers))
    found = [x for x in report["findings"] if x["rule"] == "too-many-layers"]
    assert bool(found) is flagged
    if flagged:
        assert found[0]["severity"] == "warning" and f"{count} layers" in found[0]["message"]
        assert "max depth exceeded" in found[0]["message"]


# -- #67 Windows images ----------------------------------------------------------------------------------------


def test_67_windows_image_says_elf_linkage_is_not_applicable(tmp_path: Path) -> None:
    layer = h.layers()["67-windows-layer"]
    config = json.dumps(h.config_doc([h.sha(layer)], os="windows",
                                     config={"Entrypoint": ["C:\\app.exe"]})).encode()
    ref = h.write_image("oci-dir", tmp_path / "layout", [h.Blob(layer)], config=config)
    report = inspect_json(ref)
    assert report["entrypoint"]["verdict"] == "unknown" and report["entrypoint"]["argv"] == ["C:\\app.exe"]
    assert report["entrypoint"]["message"] == ("ELF linkage not applicable: a windows image (start-up checks "
                                               "cover Linux images)")
    assert report["binaries"] == [] and not [x for x in report["findings"] if x["severity"] == "error"]
    table = cli("inspect", "--fail-on", "never", ref).stdout
    assert "entrypoint - ELF linkage not applicable: a windows image" in table


# -- #78 links that climb above the root -----------------------------------------------------------------------


def test_78_a_link_climbing_above_the_root_is_noted_and_kept(tmp_path: Path) -> None:
    layer = make_layer([f("etc/shadow", b"s"), sym("srv/www/climb", "../../../../etc/shadow"),
                        sym("srv/www/fine", "../../etc/shadow"), sym("abs", "/../etc/shadow"),
                        sym("up", "..")])
    ref = layout(tmp_path, [layer])
    found = {x["path"]: x for x in inspect_json(ref)["findings"] if x["rule"] == "link-climbs-above-root"}
    assert set(found) == {"/srv/www/climb", "/abs", "/up"}
    assert found["/srv/www/climb"]["severity"] == "info"
    assert "points to /etc/shadow in the container" in found["/srv/www/climb"]["message"]
    rows = {row["path"]: row for row in json.loads(cli("ls", "--format", "json", ref).stdout)}
    assert rows["/srv/www/climb"]["link"] == "../../../../etc/shadow"  # the link itself is kept as it is


def test_78_findings_for_climbing_links_are_bounded(tmp_path: Path) -> None:
    layer = make_layer([sym(f"l{i:04d}", "../../x") for i in range(150)])
    found = [x for x in inspect_json(layout(tmp_path, [layer]))["findings"] if x["rule"] == "link-climbs-above-root"]
    assert len(found) == 101
    assert [x["message"] for x in found if x["path"] is None] == ["50 more symlinks climb above / (first 100 listed)"]



# -- #63 an overlayfs whiteout (char 0:0) tarred as it is -----------------------------------------------------


def test_63_char_0_0_is_kept_as_a_device_and_flagged(tmp_path: Path) -> None:
    scan = scan_layer(io.BytesIO(h.layers()["63-specials"]), label="layer 1/1")
    assert scan.overlay_whiteouts == ("/gone",)  # not /dev/null (1:3), not the block device 8:0
    base = make_layer([f("etc/motd", b"welcome\n"), f("etc/keep", b"k")])
    upper = h.tar_of(h.member("etc/motd", typeflag=b"3"), h.member("etc/null", typeflag=b"3", devmajor=1, devminor=3))
    ref = layout(tmp_path, [base, upper])
    found = [x for x in inspect_json(ref)["findings"] if x["rule"] == "overlay-whiteout-in-tar"]
    assert [(x["path"], x["layer"], x["severity"]) for x in found] == [("/etc/motd", 1, "warning")]
    rows = {row["path"]: row for row in json.loads(cli("ls", "--format", "json", ref).stdout)}
    assert rows["/etc/motd"]["type"] == "char"  # what a runtime extracts: a device, the file is not deleted

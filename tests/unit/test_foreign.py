"""Foreign and non-distributable layers (RELIABILITY.md #20): never fetched, kept in place, reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.builders import ImageSpec, f, make_layer, sha, write_oci_layout

FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"


def foreign_layout(root: Path) -> tuple[Path, str]:
    """An OCI layout whose first layer is foreign: its blob is not in the layout, as in a Windows image."""
    base = make_layer([f("Files/windows.dll", b"MZ" * 100)])
    app = make_layer([f("app/run.sh", "#!/bin/sh\n")])
    write_oci_layout(root, {"latest": ImageSpec([base, app], entrypoint=["/app/run.sh"], compression="tar")})
    index = json.loads((root / "index.json").read_text())
    manifest_path = root / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]
    manifest = json.loads(manifest_path.read_text())
    manifest["layers"][0]["mediaType"] = FOREIGN
    manifest["layers"][0]["urls"] = ["http://169.254.169.254/never-fetched"]
    (root / "blobs" / "sha256" / sha(base)[7:]).unlink()
    body = json.dumps(manifest).encode()
    manifest_path.unlink()
    (root / "blobs" / "sha256" / sha(body)[7:]).write_bytes(body)
    index["manifests"][0].update(digest=sha(body), size=len(body))
    (root / "index.json").write_text(json.dumps(index))
    return root, sha(base)


def test_a_foreign_layer_is_not_read_and_the_report_says_so(tmp_path: Path) -> None:
    layout, digest = foreign_layout(tmp_path / "layout")
    run = subprocess.run([sys.executable, "-m", "imgaudit", "inspect", "--format", "json", "--no-cache",
                          f"oci:{layout}"], capture_output=True, text=True, check=False)
    report = json.loads(run.stdout)
    assert report["complete"] is False
    assert any("foreign layer" in item["reason"] and digest[:19] in item["what"] for item in report["incomplete"])
    assert [layer["uncompressed_bytes"] for layer in report["size"]["layers"]] == [0, len(make_layer(
        [f("app/run.sh", "#!/bin/sh\n")]))]
    assert run.returncode in (0, 1), run.stderr  # inspected, not a failure to read the image

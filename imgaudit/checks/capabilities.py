"""File capabilities in the final filesystem (RELIABILITY.md #66): the files that carry them
(`file-capabilities`), the ones a later layer wrote again without them (`capability-dropped`), and the
entrypoint's and each binary's own in the report (`capabilities`, as getcap prints them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgaudit.entrypoint import beyond_default_caps, cap_add_flags
from imgaudit.layers import EntryType
from imgaudit.report import Finding, Report, Severity
from imgaudit.rules import rule
from imgaudit.xattrs import INVALID

if TYPE_CHECKING:
    from imgaudit.audit import Loaded
    from imgaudit.rootfs import RootFS

# A value the kernel refuses needs other advice than the rule page's (which is for capabilities that work).
INVALID_FIX = "Rewrite the capabilities with `setcap` in the image build, or remove them with `setcap -r FILE`."


def analyse(loaded: Loaded, report: Report) -> None:
    fs = loaded.rootfs
    carriers = sorted((path, node) for path, node in fs.nodes.items()
                      if node.entry.xattrs and node.entry.type is EntryType.FILE)
    for path, node in carriers:
        caps = node.entry.capabilities
        if caps is not None:
            report.findings.append(_carrier(path, node.layer, caps))
    report.findings.extend(_dropped(fs))
    for binary in report.binaries:
        binary.capabilities = _capabilities(fs, binary.path)
    report.entrypoint.capabilities = _capabilities(fs, report.entrypoint.path)


def _carrier(path: str, layer: int, caps: str) -> Finding:
    if caps.startswith(INVALID):
        return Finding("file-capabilities", Severity.WARNING,
                       f"security.capability is {caps}: the kernel refuses such a value (EINVAL)", path, layer,
                       INVALID_FIX)
    beyond = beyond_default_caps(caps)
    if beyond:  # the entrypoint's verdict says the same of the entrypoint; this is every other program's
        adds = cap_add_flags(beyond)
        return Finding("file-capabilities", Severity.WARNING,
                       f"file capabilities {caps}: {', '.join(beyond)} is not in Docker's default set, so the kernel "
                       "refuses to exec it (operation not permitted)", path, layer,
                       f"Run containers that exec it with `{adds}`, or remove the capabilities (`setcap -r FILE`), "
                       "or set them without `e` if the program raises them itself.")
    return Finding("file-capabilities", Severity.INFO,
                   f"file capabilities {caps}: a process that executes it gains them", path, layer,
                   rule("file-capabilities").fix)


def _dropped(fs: RootFS) -> list[Finding]:
    """Only where the final file still lacks them: a later layer that sets them again repairs the loss.
    The last loss of a path is the one that stands."""
    out = []
    for lost in {lost.path: lost for lost in fs.lost_capabilities}.values():
        node = fs.nodes.get(lost.path)
        if node is None or node.entry.capabilities is not None or node.layer < lost.lost_in:
            continue
        out.append(Finding("capability-dropped", Severity.WARNING,
                           f"had file capabilities {lost.capabilities} from layer {lost.set_in}; layer "
                           f"{lost.lost_in} wrote it again without them", lost.path, lost.lost_in,
                           rule("capability-dropped").fix))
    return out


def _capabilities(fs: RootFS, path: str | None) -> str | None:
    node = fs.get(path) if path else None
    return node.entry.capabilities if node is not None else None

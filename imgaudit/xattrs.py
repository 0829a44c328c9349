"""Extended attributes of a tar entry (PAX `SCHILY.xattr.NAME` records, the only form Go's archive/tar and so
the container runtimes apply), and file capabilities decoded from `security.capability` (linux/capability.h
`vfs_cap_data` revisions 1-3) into the text `getcap` prints (libcap's `cap_to_text`).

Every value is bounded: a hostile record becomes a readable marker, never an exception (RELIABILITY.md #66).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

PREFIX = "SCHILY.xattr."
CAPABILITY = "security.capability"
MAX_XATTRS = 32  # kept per entry; the rest are counted (a layer may carry 100 000 on one file)
MAX_NAME = 255  # XATTR_NAME_MAX
MAX_TEXT = 256  # characters of a value shown

# capability.h order; libcap names the bits the running kernel knows (41 since Linux 5.9), numbers the rest.
CAP_NAMES = (
    "cap_chown", "cap_dac_override", "cap_dac_read_search", "cap_fowner", "cap_fsetid", "cap_kill", "cap_setgid",
    "cap_setuid", "cap_setpcap", "cap_linux_immutable", "cap_net_bind_service", "cap_net_broadcast",
    "cap_net_admin", "cap_net_raw", "cap_ipc_lock", "cap_ipc_owner", "cap_sys_module", "cap_sys_rawio",
    "cap_sys_chroot", "cap_sys_ptrace", "cap_sys_pacct", "cap_sys_admin", "cap_sys_boot", "cap_sys_nice",
    "cap_sys_resource", "cap_sys_time", "cap_sys_tty_config", "cap_mknod", "cap_lease", "cap_audit_write",
    "cap_audit_control", "cap_setfcap", "cap_mac_override", "cap_mac_admin", "cap_syslog", "cap_wake_alarm",
    "cap_block_suspend", "cap_audit_read", "cap_perfmon", "cap_bpf", "cap_checkpoint_restore",
)
# vfs_cap_data: le32 magic_etc (revision in the top byte, bit 0 = effective), then (permitted, inheritable)
# le32 pairs, one for revision 1, two for 2 and 3; revision 3 adds le32 rootid (the namespace's root uid).
_REVISIONS = {1: 12, 2: 20, 3: 24}  # XATTR_CAPS_SZ_1..3: the kernel refuses any other size (EINVAL)
_EFFECTIVE, _PERMITTED, _INHERITABLE = 1, 2, 4  # libcap's LIBCAP_EFF, _PER, _INH (1 << CAP_EFFECTIVE, …)
INVALID = "invalid"

Xattrs = tuple[tuple[str, str], ...]


def from_pax(pax: Mapping[str, str]) -> tuple[Xattrs, int]:
    """The entry's xattrs as (name, readable value) pairs, sorted by name, at most MAX_XATTRS; and how many
    more there were. tarfile decodes a PAX value as UTF-8 with surrogateescape, so the bytes come back whole."""
    found = sorted(key for key in pax if key.startswith(PREFIX))
    kept = tuple((_clip(key[len(PREFIX):], MAX_NAME), _value(key[len(PREFIX):], pax[key]))
                 for key in found[:MAX_XATTRS])
    return kept, max(0, len(found) - MAX_XATTRS)


def capabilities(xattrs: Xattrs) -> str | None:
    """The getcap text of the entry's file capabilities, `invalid …` for a value the kernel refuses, or None."""
    return next((value for name, value in xattrs if name == CAPABILITY), None)


def _value(name: str, value: str) -> str:
    raw = value.encode("utf-8", "surrogateescape")
    if name == CAPABILITY:
        return decode_capability(raw)
    text = raw.decode("utf-8", "backslashreplace")
    printable = text.isprintable() and "\\" not in text
    return _clip(text, MAX_TEXT) if printable else "0x" + raw[:MAX_TEXT // 2].hex() + ("…" if len(raw) > 128 else "")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def decode_capability(raw: bytes) -> str:
    """`vfs_cap_data` → `cap_net_bind_service=ep` (with ` [rootid=N]` for a revision 3 value of another root)."""
    if len(raw) < 4:
        return f"{INVALID} ({len(raw)} bytes)"
    magic = struct.unpack_from("<I", raw)[0]
    revision = magic >> 24
    size = _REVISIONS.get(revision)
    if size is None:
        return f"{INVALID} (revision {revision}, {len(raw)} bytes)"
    if len(raw) != size:
        return f"{INVALID} (revision {revision} takes {size} bytes, not {len(raw)})"
    words = struct.unpack_from(f"<{(size - 4) // 4}I", raw, 4)
    permitted = words[0] | (words[2] << 32 if revision > 1 else 0)
    inheritable = words[1] | (words[3] << 32 if revision > 1 else 0)
    text = cap_to_text(permitted, inheritable, effective=bool(magic & 1))
    rootid = words[4] if revision == 3 else 0
    return f"{text} [rootid={rootid}]" if rootid else text


def cap_to_text(permitted: int, inheritable: int, *, effective: bool) -> str:
    """libcap's cap_to_text for a file: the most common flag set is the base (`=…`), the other sets follow as
    `names+flags`/`-flags`; a base of nothing with a first group reads `names=flags`. A file's effective
    bit raises every permitted or inheritable capability (libcap `_fcaps_load`)."""
    known = len(CAP_NAMES)
    flags = [_flags(permitted, inheritable, effective, bit) for bit in range(64)]
    histo = [0] * 8
    for bit in range(known):
        histo[flags[bit]] += 1
    base = 7
    for state in range(6, -1, -1):  # ties go to the smaller set: "no capability" wins over any other
        if histo[state] >= histo[base]:
            base = state
    text = "=" + _letters(base)
    for state in range(7, -1, -1):
        if state == base or not histo[state]:
            continue
        names = ",".join(CAP_NAMES[bit] for bit in range(known) if flags[bit] == state)
        raised, lowered = state & ~base, ~state & base
        if raised and text == "=":
            text = f"{names}={_letters(raised)}"  # "= a+ep" is printed as the shorter "a=ep"
        else:
            text += f" {names}" + (f"+{_letters(raised)}" if raised else "")
        if lowered:
            text += f"-{_letters(lowered)}"
    for state in range(7, 0, -1):  # bits no kernel names yet: numbers, always raised
        numbers = ",".join(str(bit) for bit in range(known, 64) if flags[bit] == state)
        if numbers:
            text += f" {numbers}+{_letters(state)}"
    return text


def _flags(permitted: int, inheritable: int, effective: bool, bit: int) -> int:
    p, i = permitted >> bit & 1, inheritable >> bit & 1
    return (_EFFECTIVE if effective and (p or i) else 0) | (_INHERITABLE if i else 0) | (_PERMITTED if p else 0)


def _letters(state: int) -> str:
    return ("e" if state & _EFFECTIVE else "") + ("i" if state & _INHERITABLE else "") + (
        "p" if state & _PERMITTED else "")


def capability_sets(text: str) -> tuple[int, int, bool] | None:
    """(permitted, inheritable, effective) back from the text `decode_capability` wrote (what a scan keeps), or
    None for an invalid value or a revision 3 value of another namespace's root (the kernel ignores it when the
    container runs in the host's user namespace, as Docker's default does)."""
    if text.startswith(INVALID):
        return None
    text, _, rootid = text.partition(" [rootid=")
    if rootid:
        return None
    state = [0] * 64
    for clause in text.split(" "):
        cut = next((i for i, c in enumerate(clause) if c in "=+-"), len(clause))
        names, ops = clause[:cut], clause[cut:]
        bits = range(len(CAP_NAMES)) if not names else [_bit(name) for name in names.split(",")]
        for op, letters in _operations(ops):
            mask = sum(flag for letter, flag in (("e", _EFFECTIVE), ("i", _INHERITABLE), ("p", _PERMITTED))
                       if letter in letters)
            for bit in bits:
                state[bit] = mask if op == "=" else state[bit] | mask if op == "+" else state[bit] & ~mask
    permitted = sum(1 << bit for bit in range(64) if state[bit] & _PERMITTED)
    inheritable = sum(1 << bit for bit in range(64) if state[bit] & _INHERITABLE)
    return permitted, inheritable, any(s & _EFFECTIVE for s in state)


def _bit(name: str) -> int:
    return CAP_NAMES.index(name) if name in CAP_NAMES else int(name)


def _operations(ops: str) -> list[tuple[str, str]]:
    """`=ep`, `+ep-i` → [("=", "ep")], [("+", "ep"), ("-", "i")]."""
    out: list[tuple[str, str]] = []
    for char in ops:
        if char in "=+-":
            out.append((char, ""))
        else:
            out[-1] = (out[-1][0], out[-1][1] + char)
    return out

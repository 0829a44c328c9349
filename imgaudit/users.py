"""The image's USER as the container gets it. dockerd resolves it with runc's `libcontainer/user.GetExecUser` (runc
1.1; moby/sys/user since) over the image's /etc/passwd and /etc/group and writes `uid`, `gid` and the supplementary
groups into the OCI spec as uint32; runc resolves `uid:gid` again as the container starts. A negative id wraps
there, and is refused or lands on another line (`docker run --user` is the oracle: tests/e2e/test_oracle.py).

Numbers are Go's `strconv.Atoi`: an optional sign and ASCII digits. `str.isdigit` also takes "²" (which
`int()` refuses: an internal error until the thirteenth round) and "١٢" (which `int()` reads as 12, where
runc sees a name). A field of the files that is no number reads as 0, as runc's `parseLine` ignores the error.
"""

from __future__ import annotations

from dataclasses import dataclass

from imgaudit.rootfs import RootFS

MAX_ID = 2**31 - 1  # runc's maxId: uids and gids past it are refused
MAX_LINE = 64 << 10  # bufio.MaxScanTokenSize: a longer line stops runc's parser, whatever the user
_INT64 = 2**63
_UINT32 = 2**32  # the OCI spec's uid and gid: Go's uint32() of dockerd's int wraps
# Go's unicode.IsSpace, which bytes.TrimSpace strips from each line (str.strip would also strip \x1c-\x1f)
_GO_SPACE = " \t\n\v\f\r\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
            "\u2028\u2029\u202f\u205f\u3000"


@dataclass(frozen=True)
class User:
    uid: int = 0
    gid: int = 0
    groups: frozenset[int] = frozenset()  # the gid and the supplementary groups
    name: str = "root"


class UserNotFound(Exception):
    """runc cannot map the image's USER (the container is never created)."""


def _go_int(text: str) -> tuple[int, bool]:
    """Go's strconv.Atoi on a 64-bit host: (value, no error). A syntax error gives 0, a value past int64 the
    bound it passed, each with the error."""
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not (digits.isascii() and digits.isdigit()):
        return 0, False
    value = int(text)
    bounded = min(max(value, -_INT64), _INT64 - 1)
    return bounded, bounded == value


def atoi(text: str) -> int | None:
    """strconv.Atoi's value, None where it returns an error."""
    value, ok = _go_int(text)
    return value if ok else None


def _field(text: str) -> int:
    """A number field of /etc/passwd or /etc/group as runc's parseLine reads it: Atoi, its error ignored."""
    return _go_int(text)[0]


class _Unreadable(Exception):
    """The file opens but runc's parser fails on it (a directory, a line too long), whatever the user."""


Rows = list[list[str]]


def _rows(rootfs: RootFS, path: str, width: int) -> Rows | _Unreadable:
    """The lines of a passwd-format file, split at ':' and padded to `width` fields (runc leaves missing ones
    empty or 0), or why runc's parser fails on it; a lookup that needs the file then fails with that. No line is a
    comment to runc. A missing file has no lines (dockerd passes no reader)."""
    node = rootfs.get(path)
    if node is not None and node.is_dir:
        return _Unreadable(f"read {path}: is a directory")
    raw = (rootfs.read(path) or b"").split(b"\n")
    if max(map(len, raw)) >= MAX_LINE:
        return _Unreadable("bufio.Scanner: token too long")
    lines = (line.decode("utf-8", "surrogateescape").strip(_GO_SPACE) for line in raw)
    return [(fields + [""] * width)[:width] for fields in (line.split(":") for line in lines if line)]


def resolve_user(rootfs: RootFS, spec: str) -> User:
    """The uid, gid and groups a container of this image runs with for USER `spec`, or UserNotFound with the
    error dockerd or runc prints."""
    passwd, group = _rows(rootfs, "/etc/passwd", 7), _rows(rootfs, "/etc/group", 4)
    chosen = _exec_user(passwd, group, spec, daemon=True)
    started = _exec_user(passwd, group, f"{chosen.uid % _UINT32}:{chosen.gid % _UINT32}", daemon=False)
    groups = frozenset(gid % _UINT32 for gid in chosen.groups - {chosen.gid}) | {started.gid}
    return User(started.uid, started.gid, groups, chosen.name)


def _exec_user(passwd: Rows | _Unreadable, group: Rows | _Unreadable, spec: str, *, daemon: bool) -> User:
    """runc GetExecUser: `user[:group]`, each a name or a number; a number matches the passwd (group) line with
    that id, or stands alone; a name must match a line. Supplementary groups: those listing the user's name, and
    only when no group is given. dockerd reads the group file only for a group or a matched name; runc, given
    `uid:gid`, always."""
    fields = spec.split(":")
    user_arg, group_arg = fields[0], fields[1] if len(fields) > 1 else ""
    uid_arg = 0 if user_arg == "" else atoi(user_arg)  # an empty user is the default, uid 0
    if isinstance(passwd, _Unreadable):
        raise UserNotFound(f"unable to find user {user_arg or 0}: {passwd}")
    matched = next((row for row in passwd
                    if ((_field(row[2]) == uid_arg) if uid_arg is not None else row[0] == user_arg)), None)
    if matched is not None:
        user = User(_field(matched[2]), _field(matched[3]), frozenset(), matched[0])
    elif uid_arg is None:
        raise UserNotFound(f"unable to find user {user_arg}: no matching entries in passwd file")
    else:
        user = User(_in_range(uid_arg), 0, frozenset(), user_arg)
    name = matched[0] if matched is not None else ""
    if daemon and not group_arg and not name:
        return User(user.uid, user.gid, frozenset({user.gid}), user.name)
    if isinstance(group, _Unreadable):
        raise UserNotFound(f"unable to find groups for spec {name}: {group}")
    if group_arg:
        gid = _group(group, group_arg)
        return User(user.uid, gid, frozenset({gid}), user.name)
    supplementary = {_field(gid) for _, _, gid, members in group if members and name in members.split(",")}
    return User(user.uid, user.gid, frozenset(supplementary | {user.gid}), user.name)


def _group(groups: Rows, group_arg: str) -> int:
    gid_arg = atoi(group_arg)
    for name, _, gid, _ in groups:
        if (_field(gid) == gid_arg) if gid_arg is not None else name == group_arg:
            return _field(gid)
    if gid_arg is None:
        raise UserNotFound(f"unable to find group {group_arg}: no matching entries in group file")
    return _in_range(gid_arg)


def _in_range(value: int) -> int:
    if not 0 <= value <= MAX_ID:
        raise UserNotFound(f"uids and gids must be in range 0-{MAX_ID}")
    return value

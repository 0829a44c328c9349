"""USER resolution as runc's GetExecUser does it over the image's /etc/passwd and /etc/group (the e2e oracle holds
the same cases to `docker run --user`)."""

from __future__ import annotations

import io

import pytest

from imgaudit.layers import scan_layer
from imgaudit.rootfs import RootFS
from imgaudit.users import MAX_ID, MAX_LINE, User, UserNotFound, atoi, resolve_user
from tests.builders import d, f, make_layer

PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
          "  nobody:x:65534:65534:nobody:/:/sbin/nologin  \n"
          "odd:x:²:7::/:/bin/sh\n"  # no number: runc reads 0
          "lead:x:0042:1000::/:/bin/sh\n"
          "short:x:77\n"  # fields past the line's end are empty, so its gid is 0
          ":x:99:99::/:/bin/sh\n"  # a line without a name
          "#c:x:1234:1000::/:/bin/sh\n"  # runc skips no comment: a user named "#c"
          "neg:x:-2:-2::/:/bin/sh\nbig:x:4294967294:0::/:/bin/sh\nnegg:x:5:-3::/:/bin/sh\n")
GROUP = "root:x:0:\napp:x:1000:nobody,lead\nother:x:2000:lead\nempty:x:3000:\nwords:x:x:nobody\n"


def fs(passwd: str | None = PASSWD, group: str | None = GROUP) -> RootFS:
    items = [f("etc/passwd", passwd.encode())] if passwd is not None else []
    items += [f("etc/group", group.encode())] if group is not None else []
    return RootFS.build([scan_layer(io.BytesIO(make_layer(items)))])


@pytest.mark.parametrize(("text", "value"), [
    ("42", 42), ("0042", 42), ("+0", 0), ("-1", -1), (str(2**63 - 1), 2**63 - 1), (str(2**63), None), ("", None),
    ("+", None), ("-", None), ("²", None), ("١٢", None), (" 1", None), ("1_0", None), ("0x1", None),
])
def test_numbers_are_what_go_strconv_atoi_takes(text: str, value: int | None) -> None:
    assert atoi(text) == value


@pytest.mark.parametrize(("spec", "user"), [
    ("", User(0, 0, frozenset({0}), "root")),
    ("root", User(0, 0, frozenset({0}), "root")),
    ("nobody", User(65534, 65534, frozenset({65534, 1000, 0}), "nobody")),  # "words" has gid x: read as 0
    ("lead", User(42, 1000, frozenset({1000, 2000}), "lead")),
    ("42", User(42, 1000, frozenset({1000, 2000}), "lead")),  # a number matches the uid 0042
    ("odd", User(0, 7, frozenset({7}), "odd")),  # its uid field is no number: root
    ("short", User(77, 0, frozenset({0}), "short")),
    ("99", User(99, 99, frozenset({99}), "")),  # matched, but a nameless user is in no group list
    ("1234", User(1234, 1000, frozenset({1000}), "#c")),  # docker run --user 1234 prints gid=1000(app)
    ("4242", User(4242, 0, frozenset({0}), "4242")),  # a number alone: no supplementary groups
    ("nobody:app", User(65534, 1000, frozenset({1000}), "nobody")),  # a group given: only that one
    ("nobody:2000", User(65534, 2000, frozenset({2000}), "nobody")),
    ("nobody:5555", User(65534, 5555, frozenset({5555}), "nobody")),
    ("lead:1000:ignored", User(42, 1000, frozenset({1000}), "lead")),  # a third field is dropped
    (str(MAX_ID), User(MAX_ID, 0, frozenset({0}), str(MAX_ID))),
    ("big", User(2**32 - 2, 0, frozenset({0}), "big")),  # a uid past MAX_ID on its line is taken as it is
    ("neg:0", User(2**32 - 2, 0, frozenset({0}), "neg")),  # -2 wraps to big's uid, which runc then finds
])
def test_user_specs_resolve_as_runc_resolves_them(spec: str, user: User) -> None:
    assert resolve_user(fs(), spec) == user


@pytest.mark.parametrize(("spec", "message"), [
    ("ghost", "unable to find user ghost: no matching entries in passwd file"),
    ("²", "unable to find user ²: no matching entries in passwd file"),  # was an internal error
    ("١٢", "unable to find user ١٢: no matching entries in passwd file"),  # was uid 12
    ("-1", f"uids and gids must be in range 0-{MAX_ID}"),
    (str(MAX_ID + 1), f"uids and gids must be in range 0-{MAX_ID}"),
    ("root:nogroup", "unable to find group nogroup: no matching entries in group file"),
    ("root:²", "unable to find group ²: no matching entries in group file"),
    ("root:-5", f"uids and gids must be in range 0-{MAX_ID}"),
    ("neg", f"uids and gids must be in range 0-{MAX_ID}"),  # its gid -2 wraps past MAX_ID and no group has it
    ("negg", f"uids and gids must be in range 0-{MAX_ID}"),
])
def test_what_runc_refuses_is_refused_with_its_words(spec: str, message: str) -> None:
    with pytest.raises(UserNotFound) as err:
        resolve_user(fs(), spec)
    assert str(err.value) == message


def test_without_passwd_or_group_files_numbers_stand_alone_and_names_are_not_found() -> None:
    bare = fs(None, None)
    assert resolve_user(bare, "") == User(0, 0, frozenset({0}), "")
    assert resolve_user(bare, "1000:1000") == User(1000, 1000, frozenset({1000}), "1000")
    with pytest.raises(UserNotFound, match="unable to find user app"):
        resolve_user(bare, "app")
    with pytest.raises(UserNotFound, match="unable to find group app"):
        resolve_user(bare, "0:app")


@pytest.mark.parametrize(("length", "refused"), [(MAX_LINE - 1, False), (MAX_LINE, True)])
def test_a_line_past_go_s_scanner_refuses_every_user(length: int, refused: bool) -> None:
    """docker run: a 65535-byte line of /etc/passwd is read, a 65536-byte one fails every container."""
    rootfs = fs(PASSWD + "a" * length + "\n")
    if not refused:
        assert resolve_user(rootfs, "nobody").uid == 65534
        return
    with pytest.raises(UserNotFound, match=r"^unable to find user nobody: bufio\.Scanner: token too long$"):
        resolve_user(rootfs, "nobody")
    with pytest.raises(UserNotFound, match=r"^unable to find groups for spec root: bufio\.Scanner: token too long$"):
        resolve_user(fs(PASSWD, GROUP + "a" * length), "")


@pytest.mark.parametrize(("directory", "spec", "message"), [
    ("etc/passwd", "", "unable to find user 0: read /etc/passwd: is a directory"),
    ("etc/passwd", "4242", "unable to find user 4242: read /etc/passwd: is a directory"),
    ("etc/group", "", "unable to find groups for spec root: read /etc/group: is a directory"),
    ("etc/group", "4242", "unable to find groups for spec : read /etc/group: is a directory"),  # runc's own lookup
])
def test_a_directory_where_a_file_belongs_refuses_every_user(directory: str, spec: str, message: str) -> None:
    other = "etc/group" if directory == "etc/passwd" else "etc/passwd"
    items = [d(directory), f(other, (GROUP if other == "etc/group" else PASSWD).encode())]
    with pytest.raises(UserNotFound) as err:
        resolve_user(RootFS.build([scan_layer(io.BytesIO(make_layer(items)))]), spec)
    assert str(err.value) == message

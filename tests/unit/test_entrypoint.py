"""Entrypoint verdicts on synthetic images (real ELF fixtures): what runc, the kernel and the loader
would say, word for word (the e2e oracle checks the same messages against `docker run`)."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest

from imgaudit import entrypoint
from imgaudit.checks import linkage
from imgaudit.elf import read_elf
from imgaudit.image import ImageConfig, Platform
from imgaudit.layers import scan_layer
from imgaudit.rootfs import RootFS
from imgaudit.runtime import runtime_facts
from tests.builders import DEFAULT_ENV, Item, d, f, make_layer, sym

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "build"
pytestmark = pytest.mark.skipif(not (FIX / "musl" / "hello-static").exists(), reason="run scripts/build-fixtures")
AARCH64_HEAD = b"\x7fELF\x02\x01\x01" + bytes(11) + b"\xb7\x00" + bytes(44)
PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n"
GROUP = b"root:x:0:\napp:x:1000:nobody\n"


def fx(rel: str) -> bytes:
    return (FIX / rel).read_bytes()


def image(items: list[Item]) -> RootFS:
    return RootFS.build([scan_layer(io.BytesIO(make_layer(items)), elf_reader=read_elf)])


BASE = [
    f("static", fx("musl/hello-static"), 0o755),
    f("gl", fx("glibc/hello-dynamic"), 0o755),
    f("noexec", fx("musl/hello-static"), 0o644),
    f("owner-only", fx("musl/hello-static"), 0o700),
    Item("group-only", data=fx("musl/hello-static"), mode=0o710, gid=1000),
    f("text", b"echo hi\n", 0o755),
    f("arm", AARCH64_HEAD, 0o755),
    f("crlf.sh", b"#!/bin/sh\r\necho hi\r\n", 0o755),
    f("nope.sh", b"#! /bin/nope  -x \necho hi\n", 0o755),
    f("env.sh", b"#!/usr/bin/env nope\necho hi\n", 0o755),
    f("envok.sh", b"#!/usr/bin/env tool\n", 0o755),
    f("envS.sh", b"#!/usr/bin/env -S FOO=1 nope -u\n", 0o755),
    f("envSok.sh", b"#!/usr/bin/env -SFOO=1\ttool -u\n", 0o755),
    f("envi.sh", b"#!/usr/bin/env -i tool\n", 0o755),
    f("envlong.sh", b"#!/usr/bin/env --ignore-environment tool\n", 0o755),
    f("envsplit.sh", b"#!/usr/bin/env --split=nope -x\n", 0o755),
    f("nul.sh", b"#!/static\0 /nope\n", 0o755),
    f("dir.sh", b"#!/adir\n", 0o755),
    f("bare.sh", b"#!", 0o755),
    f("long.sh", b"#!/" + b"a" * 300 + b"\n", 0o755),
    f("loop.sh", b"#!/loop/sh\n", 0o755), sym("loop", "/loop"),
    f("usr/local/bin/tool", fx("musl/hello-static"), 0o755),
    f("usr/bin/env", fx("musl/hello-static"), 0o755),
    f("etc/passwd", PASSWD), f("etc/group", GROUP), d("adir"),
]


def judge(argv: list[str], items: list[Item] | None = None, *, user: str = "", env: tuple[str, ...] = (DEFAULT_ENV,),
          arch: str = "amd64") -> entrypoint.Verdict:
    config = ImageConfig(Platform("linux", arch), env=env)
    return entrypoint.judge(image(BASE if items is None else items), config, argv, user=user)


def outcome(v: entrypoint.Verdict) -> tuple[str, str | None, str | None]:
    return v.verdict, v.failure, v.message


@pytest.mark.parametrize(("argv", "expected"), [
    (["/static"], ("ok", None, None)),
    (["tool", "x"], ("ok", None, None)),  # found on PATH
    ([], ("fail", "entrypoint-missing", "No command specified")),
    (["/nope"], ("fail", "entrypoint-missing", 'exec: "/nope": stat /nope: no such file or directory')),
    (["/static/x"], ("fail", "entrypoint-missing", 'exec: "/static/x": stat /static/x: not a directory')),
    (["/static/"], ("fail", "entrypoint-missing", 'exec: "/static/": stat /static/: not a directory')),
    (["static/"], ("fail", "entrypoint-missing", 'exec: "static/": stat static/: not a directory')),
    (["nope"], ("fail", "entrypoint-missing", 'exec: "nope": executable file not found in $PATH')),
    (["/bin/sh", "-c", "x"],
     ("fail", "entrypoint-missing", 'exec: "/bin/sh": stat /bin/sh: no such file or directory')),
    (["/noexec"], ("fail", "not-executable", 'exec: "/noexec": permission denied')),
    (["/adir"], ("fail", "not-executable", 'exec: "/adir": permission denied')),
    (["/adir/"], ("fail", "not-executable", 'exec: "/adir/": permission denied')),
    (["/text"], ("fail", "exec-format", "exec /text: exec format error")),
    (["/arm"], ("fail", "exec-format", "exec /arm: exec format error")),
    (["/gl"], ("fail", "missing-interpreter", "exec /gl: no such file or directory")),
    (["/crlf.sh"], ("fail", "script-interpreter-missing", "exec /crlf.sh: no such file or directory")),
    (["/nope.sh"], ("fail", "script-interpreter-missing", "exec /nope.sh: no such file or directory")),
    (["/env.sh"], ("fail", "script-interpreter-missing", "/usr/bin/env: 'nope': No such file or directory")),
    (["/envok.sh"], ("ok", None, None)),
    (["/envS.sh"], ("fail", "script-interpreter-missing", "/usr/bin/env: 'nope': No such file or directory")),
    (["/envSok.sh"], ("ok", None, None)),
    (["/envi.sh"], ("fail", "script-interpreter-missing", "/usr/bin/env: invalid option -- ' '")),
    # the word is "--ignore-environment tool": no long option has that name
    (["/envlong.sh"], ("fail", "script-interpreter-missing", "/usr/bin/env: unrecognized option "
                                                             "'--ignore-environment tool'")),
    (["/envsplit.sh"], ("fail", "script-interpreter-missing", "/usr/bin/env: 'nope': No such file or directory")),
    (["/nul.sh"], ("ok", None, None)),
    (["/dir.sh"], ("fail", "not-executable", "exec /dir.sh: permission denied")),
    (["/bare.sh"], ("fail", "not-executable", "exec /bare.sh: permission denied")),  # "" is the working dir
    (["/long.sh"], ("fail", "exec-format", "exec /long.sh: exec format error")),
    (["/loop.sh"], ("fail", "other", "exec /loop.sh: too many levels of symbolic links")),
])
def test_verdicts(argv: list[str], expected: tuple[str, str | None, str | None]) -> None:
    assert outcome(judge(argv)) == expected


def test_user_permissions_follow_passwd_and_group() -> None:
    assert judge(["/owner-only"]).verdict == "ok"  # root: any execute bit
    assert outcome(judge(["/owner-only"], user="nobody")) == (
        "fail", "not-executable", "exec /owner-only: permission denied")
    assert judge(["/group-only"], user="nobody").verdict == "ok"  # nobody is a member of group app (1000)
    assert judge(["/group-only"], user="4242").verdict == "fail"
    assert outcome(judge(["/static"], user="ghost")) == (
        "fail", "other", "unable to find user ghost: no matching entries in passwd file")
    assert judge(["/static"], user="4242").verdict == "ok"  # numeric users need no passwd entry


def test_platform_decides_exec_format() -> None:
    assert judge(["/static"], arch="arm64").failure == "exec-format"


def test_path_comes_from_the_image_env() -> None:
    assert judge(["tool"], env=("PATH=/bin",)).failure == "entrypoint-missing"
    assert judge(["tool"], env=()).verdict == "ok"  # Docker's default PATH


def test_busybox_env_prints_its_own_message() -> None:
    items = [*BASE[:-6], f("bin/busybox", fx("musl/hello-static"), 0o755), sym("usr/bin/env", "/bin/busybox"),
             f("etc/passwd", PASSWD)]
    assert judge(["/env.sh"], items).message == "env: can't execute 'nope': No such file or directory"
    # busybox env has no -S and no long option but its own three; musl's getopt words the refusal
    assert outcome(judge(["/envSok.sh"], items)) == (
        "fail", "script-interpreter-missing", "/usr/bin/env: unrecognized option: S")
    assert judge(["/envi.sh"], items).message == "/usr/bin/env: unrecognized option:  "
    assert judge(["/envlong.sh"], items).message == "/usr/bin/env: unrecognized option: ignore-environment tool"


def test_dynamic_entrypoint_runs_the_loader() -> None:
    items = [*BASE, f("lib/ld-musl-x86_64.so.1", fx("musl/hello-static"), 0o755),
             f("app", fx("musl/hello-dynamic"), 0o755)]
    v = judge(["/app"], items)
    assert v.resolution is not None and v.resolution.flavour == "musl"
    assert v.verdict == "fail" and v.failure == "missing-symbol"  # a static hello exports nothing: printf unresolved
    assert v.message is not None and v.message.startswith("Error relocating /app: ")


@pytest.mark.parametrize(("head", "parsed"), [
    (b"#!/bin/sh\n", ("/bin/sh", None)),
    (b"#!/bin/sh\r\n", ("/bin/sh\r", None)),
    (b"#! \t/usr/bin/env  python3 -u \n", ("/usr/bin/env", "python3 -u")),
    (b"#!\n", None),
    (b"#!   \n", None),
    (b"#!/bin/sh \r\n", ("/bin/sh", "\r")),
    (b"#!/bin/sh\0junk\n", ("/bin/sh", None)),  # the kernel's strings end at a NUL
    (b"#!/bin/sh -e\0junk\n", ("/bin/sh", "-e")),
    (b"#!/" + b"a" * 300, None),  # no newline in 256 bytes and nothing after the name: truncated, ENOEXEC
    (b"#!/bin/sh" + b" " * 300, ("/bin/sh", None)),
    (b"#!/bin/sh -" + b"e" * 300, ("/bin/sh", "-" + "e" * 244)),  # the argument is cut at byte 255
    (b"#!", ("", None)),  # a 2-byte file: the rest of the buffer is NULs, the name is empty
])
def test_parse_shebang(head: bytes, parsed: tuple[str, str | None] | None) -> None:
    assert entrypoint.parse_shebang(head) == parsed


def test_argv_is_entrypoint_plus_cmd() -> None:
    plat = Platform("linux", "amd64")
    assert entrypoint.argv_of(ImageConfig(plat, entrypoint=("/a",), cmd=("b",))) == ["/a", "b"]
    assert entrypoint.argv_of(ImageConfig(plat, cmd=("/b", "c"))) == ["/b", "c"]


def test_linkage_report_validates_against_the_schema(tmp_path: Path) -> None:
    import json

    import jsonschema

    from imgaudit.audit import audit
    from tests.builders import ImageSpec, write_docker_archive

    layer = make_layer([*BASE, f("etc/ssl/.keep", b""), f("lib/libssl.so.3", fx("greet/lib/libgreet.so.1"))])
    archive = write_docker_archive(tmp_path / "img.tar", {"t:1": ImageSpec([layer], entrypoint=["/gl"])})
    report = audit(f"docker-archive:{archive}")
    schema = json.loads((Path(__file__).resolve().parents[2] / "imgaudit/schema/report.schema.json").read_text())
    body = json.loads(json.dumps(report.to_dict()))
    jsonschema.validate(body, schema)
    assert body["entrypoint"]["failure"] == "missing-interpreter"
    assert body["entrypoint"]["fix"] and "no C library" in body["entrypoint"]["fix"]
    assert {b["path"]: b["role"] for b in body["binaries"]}["/gl"] == "entrypoint"
    assert "missing-interpreter" in {f["rule"] for f in body["findings"]}


@pytest.mark.parametrize(("argv", "fix"), [
    (["/noexec"], "/noexec is mode 0644 (owner 0:0) and not executable for USER root: `COPY --chmod=755 …` or "
                  "`RUN chmod 755 /noexec` in the build"),
    (["/dir.sh"], "/adir (the interpreter /dir.sh asks for) is a directory: point the `#!` line or PT_INTERP at the "
                  "program inside it"),
    (["/bare.sh"], "the `#!` line of /bare.sh names no interpreter: name one (`#!/bin/sh`)"),
    (["/envi.sh"], "the kernel hands `/usr/bin/env -i tool` to env as one argument, which env refuses: name the "
                   "interpreter itself (`#!/usr/bin/python3 -u`), or use env with one program name"),
])
def test_the_fix_names_what_the_kernel_or_env_refused(argv: list[str], fix: str) -> None:
    fs = image(BASE)
    config = ImageConfig(Platform("linux", "amd64"), env=(DEFAULT_ENV,))
    verdict = entrypoint.judge(fs, config, argv)
    assert linkage.fix_for(verdict, fs, config, runtime_facts(fs, "x86_64")) == fix


@pytest.mark.parametrize(("shell", "line", "expected"), [
    ("dash", b"#!/bin/sh -e\r", ("fail", "script-interpreter-missing", "/bin/sh: 0: Illegal option -\r")),
    ("dash", b"#!/bin/sh \r", ("fail", "script-interpreter-missing", "/bin/sh: 0: cannot open \r: No such file")),
    ("bash", b"#!/bin/sh -eux\r", ("fail", "script-interpreter-missing", "/bin/sh: -\r: invalid option")),
    ("bash", b"#!/bin/sh \r", ("fail", "script-interpreter-missing", "/bin/sh: \r: No such file or directory")),
    ("busybox", b"#!/bin/sh -e\r", ("fail", "script-interpreter-missing", "/bin/sh: illegal option -\r")),
    ("busybox", b"#!/bin/sh \r", ("fail", "script-interpreter-missing",
                                  "/bin/sh: can't open '\r': No such file or directory")),
    # an option letter not every shell takes, or another interpreter: a caution, not a verdict
    ("dash", b"#!/bin/sh -o\r", ("warn", None, "/bin/sh gets the argument '-o\\r' (the `#!` line ends in CRLF): "
                                               "it may refuse it")),
    ("python3", b"#!/bin/sh -u\r", ("warn", None, "/bin/sh gets the argument '-u\\r' (the `#!` line ends in CRLF): "
                                                  "it may refuse it")),
    ("dash", b"#!/bin/sh -e", ("ok", None, None)),
])
def test_a_crlf_argument_is_refused_in_the_shells_words(shell: str, line: bytes,
                                                        expected: tuple[str, str | None, str | None]) -> None:
    items = [f(f"bin/{shell}", fx("musl/hello-static"), 0o755), sym("bin/sh", shell),
             f("run.sh", line + b"\necho hi\r\n", 0o755), f("etc/passwd", PASSWD)]
    assert outcome(judge(["/run.sh"], items)) == expected


def _caps(permitted: int, *, effective: bool = True) -> dict[str, bytes]:
    return {"security.capability": struct.pack("<5I", 0x02000000 | effective, permitted, 0, 0, 0)}


@pytest.mark.parametrize(("caps", "expected"), [
    (_caps(1 << 10), ("ok", None, None)),  # cap_net_bind_service: in Docker's default set
    (_caps(1 << 12), ("fail", "other", "exec /capped: operation not permitted")),  # cap_net_admin
    (_caps(1 << 12 | 1 << 10), ("fail", "other", "exec /capped: operation not permitted")),
    (_caps(1 << 12, effective=False), ("ok", None, None)),  # the program raises it itself, or does without
])
def test_effective_file_capabilities_outside_dockers_set_refuse_the_exec(
        caps: dict[str, bytes], expected: tuple[str, str | None, str | None]) -> None:
    items = [*BASE, f("capped", fx("musl/hello-static"), 0o755, xattrs=caps)]
    assert outcome(judge(["/capped"], items)) == expected
    fs = image(items)
    config = ImageConfig(Platform("linux", "amd64"), env=(DEFAULT_ENV,))
    verdict = entrypoint.judge(fs, config, ["/capped"])
    fix = linkage.fix_for(verdict, fs, config, runtime_facts(fs, "x86_64"))
    assert (fix is not None) == (expected[0] == "fail")
    if fix is not None:
        assert "--cap-add NET_ADMIN" in fix and "cap_net_bind_service" not in fix.split("and ", 1)[1], fix


def test_a_directory_the_user_may_not_search_is_permission_denied() -> None:
    """path_resolution(7): every directory of the walk, symlinks followed, needs search (x) permission; root has
    CAP_DAC_OVERRIDE. runc's stat says so for argv[0], the kernel's open_exec for an interpreter."""
    items = [*BASE, Item("closed", kind="dir", mode=0o700), f("closed/tool", fx("musl/hello-static"), 0o755),
             Item("xonly", kind="dir", mode=0o711), f("xonly/tool", fx("musl/hello-static"), 0o755),
             sym("to-closed", "/closed"), f("closed.sh", b"#!/closed/tool\n", 0o755)]
    assert outcome(judge(["/closed/tool"], items, user="nobody")) == (
        "fail", "not-executable", 'exec: "/closed/tool": stat /closed/tool: permission denied')
    assert judge(["/to-closed/tool"], items, user="nobody").failure == "not-executable"
    assert judge(["/closed/nope"], items, user="nobody").message == \
        'exec: "/closed/nope": stat /closed/nope: permission denied'  # EACCES comes before ENOENT
    assert outcome(judge(["/closed.sh"], items, user="nobody")) == (
        "fail", "not-executable", "exec /closed.sh: permission denied")
    assert judge(["/xonly/tool"], items, user="nobody").verdict == "ok"
    assert judge(["/closed/tool"], items).verdict == "ok"  # root
    assert judge(["tool"], [*items, f("usr/local/bin/tool", fx("musl/hello-static"), 0o755)],
                 user="nobody", env=("PATH=/closed:/usr/local/bin",)).verdict == "ok"  # LookPath goes on

"""RootFS merge semantics (OCI image-spec changesets, moby UnpackLayer) and in-root link resolution."""

from __future__ import annotations

import io
import random
from collections import Counter

import pytest

from imgaudit.layers import EntryType, scan_layer
from imgaudit.rootfs import Change, RootFS, SymlinkLoop, split
from tests.builders import Item, d, f, hard, make_layer, opaque, random_layer, sym, wh


def build(*layers: list[Item]) -> RootFS:
    return RootFS.build([scan_layer(io.BytesIO(make_layer(items))) for items in layers])


def listing(fs: RootFS) -> dict[str, tuple[str, int]]:
    return {n.path: (n.type.value, n.entry.size) for n in fs.walk()}


def test_whiteout_removes_lower_file_and_missing_target_is_a_no_op() -> None:
    fs = build([f("a/x", "1"), f("a/y", "2")], [wh("a/x"), wh("nothing/here")])
    assert listing(fs) == {"/a": ("dir", 0), "/a/y": ("file", 1)}


def test_whiteout_and_readd_in_the_same_layer_in_either_order() -> None:
    for order in ([wh("a"), f("a/new", "n")], [f("a/new", "n"), wh("a")]):
        fs = build([f("a/old", "o")], order)
        assert "/a/old" not in fs.nodes and fs.nodes["/a/new"].layer == 1


@pytest.mark.parametrize("position", ["before", "after"])
def test_opaque_hides_lower_children_only_wherever_the_marker_stands(position: str) -> None:
    items = [d("o"), f("o/new", "n")]
    items = [opaque("o"), *items] if position == "before" else [*items, opaque("o")]
    fs = build([f("o/old", "x"), f("o/sub/deep", "y")], items)
    assert sorted(p for p in fs.nodes if p.startswith("/o/")) == ["/o/new"]


def test_opaque_at_the_root_hides_everything_below() -> None:
    fs = build([f("a", "1"), f("b/c", "2")], [opaque(""), f("z", "3")])
    assert sorted(fs.nodes) == ["/", "/z"]


def test_file_replaces_directory_and_back() -> None:
    fs = build([f("x/child", "c")], [f("x", "now a file")], [d("x"), f("x/again", "dir again")])
    assert listing(fs) == {"/x": ("dir", 0), "/x/again": ("file", 9)}
    assert [c for _, c in fs.history["/x/child"]] == [Change.ADDED, Change.REMOVED]


def test_entry_under_a_file_is_skipped_with_a_reason() -> None:
    fs = build([f("x", "file")], [f("x/child", "c")])  # moby fails this apply with ENOTDIR
    assert "/x/child" not in fs.nodes and "parent is not a directory" in fs.skipped[0].reason


def test_dir_over_symlink_replaces_the_link() -> None:
    fs = build([d("real"), sym("x", "/real")], [d("x"), f("x/f", "1")])
    assert fs.nodes["/x"].type is EntryType.DIR
    assert "/real/f" not in fs.nodes


def test_entry_under_lower_layer_symlink_lands_in_the_target() -> None:
    fs = build([d("tmp/probe"), sym("etc", "/tmp/probe")], [f("etc/passwd", "root")])
    assert "/tmp/probe/passwd" in fs.nodes
    assert fs.get("/etc/passwd") is fs.nodes["/tmp/probe/passwd"]


def test_whiteouts_below_a_symlinked_parent_act_on_the_target_as_docker_does() -> None:
    # Docker 20.10 (`docker export` of the image) deletes /target/keep and hides /target/sub's children,
    # while a marker on the link itself hides nothing: the runtime's view, not RELIABILITY.md #74's.
    fs = build([f("target/keep", "k"), f("target/sub/x", "x"), f("target/other", "o"), sym("link", "/target")],
               [wh("link/keep"), opaque("link/sub"), opaque("link")])
    assert "/target/keep" not in fs.nodes
    assert fs.listdir("/target/sub") == []
    assert "/target/other" in fs.nodes and fs.nodes["/link"].type is EntryType.SYMLINK


def test_implied_parents_are_created() -> None:
    fs = build([f("a/b/c/file", "x")])
    assert [fs.nodes[p].type for p in ("/a", "/a/b", "/a/b/c")] == [EntryType.DIR] * 3


def test_hardlink_binds_content_at_read_time() -> None:
    fs = build([f("a", "first"), hard("b", "a"), hard("abs", "/a")], [f("a", "replaced later")])
    assert fs.nodes["/b"].entry.size == 5 and fs.nodes["/b"].hardlink_of == "/a"
    assert fs.nodes["/abs"].entry.size == 5
    assert fs.nodes["/a"].entry.size == 14


def test_hardlink_to_missing_target_is_skipped_with_a_reason() -> None:
    fs = build([hard("b", "nowhere")])
    assert "/b" not in fs.nodes
    assert "hard link target /nowhere is missing" in fs.skipped[0].reason


def test_symlinks_resolve_inside_the_root() -> None:
    fs = build([f("usr/lib/libx.so.1", "x"), sym("lib", "usr/lib"), sym("usr/lib/libx.so", "/lib/libx.so.1"),
                sym("up", "../../../../usr/lib/libx.so.1")])
    assert fs.resolve("/lib/libx.so") == "/usr/lib/libx.so.1"
    assert fs.resolve("/up") == "/usr/lib/libx.so.1"  # .. at the root stays at the root
    assert fs.resolve("/lib/libx.so", follow_last=False) == "/usr/lib/libx.so"
    assert fs.resolve("/lib/missing") is None


def test_a_trailing_slash_names_a_directory() -> None:
    """path_resolution(7): `app/` of a file is ENOTDIR (runc's stat, then `docker run` says so), and a trailing
    slash follows a last symlink even when the caller would not."""
    fs = build([d("usr/bin"), f("usr/bin/app", b"x"), sym("bin", "usr/bin"), sym("tool", "usr/bin/app")])
    assert fs.resolve("/usr/bin/app/") is None and fs.resolve("/tool/") is None
    assert fs.resolve("/usr/bin/app") == "/usr/bin/app"
    assert fs.resolve("/usr/bin/") == "/usr/bin" and fs.resolve("/bin/", follow_last=False) == "/usr/bin"
    assert fs.resolve("/bin", follow_last=False) == "/bin" and fs.resolve("/") == "/" and fs.resolve("//") == "/"


def test_symlink_loops_stop_after_40_hops() -> None:
    fs = build([sym("a", "b"), sym("b", "a"), sym("self", "self")])
    with pytest.raises(SymlinkLoop):
        fs.resolve("/a")
    assert fs.get("/self") is None
    chain = [sym(f"c{i}", f"c{i + 1}") for i in range(40)] + [f("c40", "end")]
    assert build(chain).resolve("/c0") == "/c40"
    with pytest.raises(SymlinkLoop):
        build([sym(f"c{i}", f"c{i + 1}") for i in range(41)] + [f("c41", "end")]).resolve("/c0")


def test_history_counts_per_layer() -> None:
    fs = build([f("a", "1"), f("b", "2")], [f("a", "11"), wh("b"), f("c", "3")])
    assert fs.history["/a"] == ((0, Change.ADDED), (1, Change.MODIFIED))
    assert fs.history["/b"] == ((0, Change.ADDED), (1, Change.REMOVED))
    assert fs.history["/c"] == ((1, Change.ADDED),)


def test_small_file_content_follows_the_final_layer() -> None:
    fs = build([f("etc/os-release", "ID=old\n")], [f("etc/os-release", "ID=new\n")])
    assert fs.read("/etc/os-release") == b"ID=new\n"


_NAMES = ["a", "b", "c", "a/x", "a/y", "a/x/p", "b/q", "c/r/s", "lnk", "lnk/z", "a/lnk2"]
_TARGETS = ["a", "/b", "../c", "a/x", "nowhere"]


@pytest.mark.parametrize("seed", range(0, 400, 40))
def test_history_replays_to_every_layer_and_listdir_lists_the_live_children(seed: int) -> None:
    """A path's events, replayed up to layer k, say whether it exists after k and which layer wrote it; the
    histories a path added once keeps implicitly (RootFS.rewritten holds the others) and the children lists
    that keep removed paths (issue 7 #82) must still give what the merge of the first k layers holds."""
    for rng in (random.Random(s) for s in range(seed, seed + 40)):
        layers = [make_layer(random_layer(rng, _NAMES, targets=_TARGETS)) for _ in range(rng.randint(1, 6))]
        scans = [scan_layer(io.BytesIO(layer)) for layer in layers]
        fs = RootFS.build(scans)
        history = dict(fs.history)
        assert len(history) == len(fs.history) and all(events[0][1] is Change.ADDED for events in history.values())
        for k in range(len(scans)):
            prefix = RootFS.build(scans[:k + 1])
            replayed = {}
            for path, events in history.items():
                last = [(lay, change) for lay, change in events if lay <= k]
                if last and last[-1][1] is not Change.REMOVED:
                    replayed[path] = max(lay for lay, change in last if change is not Change.REMOVED)
            assert replayed == {p: n.layer for p, n in prefix.nodes.items() if p != "/"}, k
        for path, node in fs.nodes.items():
            if node.is_dir:
                names = sorted(split(p)[1] for p in fs.nodes if p != "/" and split(p)[0] == path)
                assert fs.listdir(path) == names, path
        added = Counter(lay for events in history.values() for lay, change in events if change is Change.ADDED)
        rewritten_added = Counter(lay for events in fs.rewritten.values() for lay, c in events if c is Change.ADDED)
        assert added == rewritten_added + Counter(fs.added_once())

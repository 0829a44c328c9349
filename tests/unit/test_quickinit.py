"""quick_init: the same objects, signature and frozenness as the dataclass's own __init__, built faster."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from typing import Any

import pytest

from imgaudit.layers import Entry, EntryType
from imgaudit.quickinit import quick_init
from imgaudit.rootfs import Node


def _twin() -> Any:
    """A fresh class each call: one keeps the dataclass's own __init__, the other gets quick_init."""

    @dataclasses.dataclass(frozen=True, slots=True)
    class Twin:
        a: int
        b: str
        c: int = 3
        d: tuple[int, ...] = ()
        e: str | None = None

    return Twin


Plain = _twin()
Quick = quick_init(_twin())


CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((1, "x"), {}),
    ((1, "x", 4), {}),
    ((1, "x", 4, (5,), "y"), {}),
    ((), {"a": 1, "b": "x"}),
    ((1,), {"b": "x", "e": "z"}),
    ((1, "x"), {"d": (1, 2), "c": 0}),
]


@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_quick_init_stores_what_the_dataclass_init_stores(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    plain, quick = Plain(*args, **kwargs), Quick(*args, **kwargs)
    assert dataclasses.astuple(quick) == dataclasses.astuple(plain)
    assert repr(quick) == repr(plain)
    assert quick == Quick(*args, **kwargs) and hash(quick) == hash(Quick(*args, **kwargs))


@pytest.mark.parametrize(("args", "kwargs"), [((), {}), ((1,), {}), ((1, "x"), {"f": 1}), ((1, "x"), {"a": 2}),
                                              ((1, "x", 3, (), None, 6), {})])
def test_quick_init_refuses_the_calls_the_dataclass_init_refuses(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        Plain(*args, **kwargs)
    with pytest.raises(TypeError):
        Quick(*args, **kwargs)


def test_the_class_stays_frozen_and_keeps_its_signature() -> None:
    quick = Quick(1, "x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        quick.a = 2  # type: ignore[misc]
    assert str(inspect.signature(Quick)) == str(inspect.signature(Plain))
    assert dataclasses.replace(quick, c=9) == Quick(1, "x", 9)


@pytest.mark.parametrize("cls", [Entry, Node])
def test_entry_and_node_take_every_field_by_position_or_name_with_its_default(cls: type) -> None:
    fields = dataclasses.fields(cls)
    parameters = list(inspect.signature(cls).parameters.values())
    assert [(p.name, p.default) for p in parameters] == [
        (f.name, inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default) for f in fields]
    entry = Entry("/a", EntryType.FILE, 0o644, 1, 2, 3, "l", b"h", "d", None, (("n", "v"),))
    assert [getattr(entry, f.name) for f in dataclasses.fields(Entry)] == [
        "/a", EntryType.FILE, 0o644, 1, 2, 3, "l", b"h", "d", None, (("n", "v"),)]
    node = Node(entry, 4, "/b")
    assert (node.entry, node.layer, node.hardlink_of) == (entry, 4, "/b")
    assert pickle.loads(pickle.dumps(node)) == node


def test_classes_it_cannot_serve_are_refused() -> None:
    @dataclasses.dataclass(slots=True)
    class Mutable:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Factory:
        a: list[int] = dataclasses.field(default_factory=list)

    @dataclasses.dataclass(frozen=True, slots=True)
    class After:
        a: int

        def __post_init__(self) -> None:
            pass

    for cls in (Mutable, Factory, After):
        with pytest.raises(TypeError):
            quick_init(cls)

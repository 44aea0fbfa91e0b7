"""The background iterator that decodes video frames ahead of detection."""

from __future__ import annotations

import itertools
import threading

import pytest

from detector._prefetch import Prefetch


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "facetrust-prefetch"]


def test_items_in_order_then_stop() -> None:
    with Prefetch(iter(range(10)), depth=3) as ahead:
        assert list(ahead) == list(range(10))
        assert next(ahead, "end") == "end"
    assert _prefetch_threads() == []


def test_the_sources_error_comes_after_its_items() -> None:
    def source():
        yield 1
        yield 2
        raise OSError("broken stream")

    with Prefetch(source()) as ahead:
        assert next(ahead) == 1 and next(ahead) == 2
        with pytest.raises(OSError, match="broken stream"):
            next(ahead)
        assert next(ahead, None) is None


def test_close_stops_an_endless_source_and_stays_ahead_by_depth() -> None:
    pulled = []

    def source():
        for i in itertools.count():
            pulled.append(i)
            yield i

    ahead = Prefetch(source(), depth=2)
    assert next(ahead) == 0
    ahead.close()
    assert _prefetch_threads() == []
    # the consumer took one item; the thread pulled at most depth more plus the one it was putting
    # when close() came, and nothing after it
    assert len(pulled) <= 1 + 2 + 1
    assert pulled == list(range(len(pulled)))
    assert next(ahead, None) is None


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth"):
        Prefetch(iter([]), depth=0)

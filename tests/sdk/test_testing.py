"""The helpers ``apothic.testing`` gives users for testing their own apps."""

from __future__ import annotations

import itertools

import pytest

from apothic.testing import unique_name, wait_for


def test_wait_for_returns_the_first_truthy_value() -> None:
    counter = itertools.count()
    assert wait_for(lambda: next(counter) >= 3 and "ready", timeout=5, interval=0.001) == "ready"


def test_wait_for_says_what_it_waited_for() -> None:
    with pytest.raises(TimeoutError, match="the moon"):
        wait_for(lambda: False, timeout=0.05, interval=0.01, what="the moon")


def test_unique_names_are_unique_and_valid_app_names() -> None:
    names = {unique_name("app") for _ in range(100)}
    assert len(names) == 100
    assert all(n.startswith("app-") and n.replace("-", "").isalnum() for n in names)

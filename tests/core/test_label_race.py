"""A task answer makes and stores the image's new mask before it takes the image's row lock
(labels.save_window_unlocked). If another answer to the image commits in between, the first
one's conditional UPDATE finds the image moved on, and the answer is made again, under the
lock, on top of the other one: both answers are in the final mask, as consecutive revisions.

PostgreSQL only: on SQLite a write transaction holds the database's write lock from its first
statement, so no other answer can commit in between."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from activeseg.core.services import labels
from activeseg.core.storage import BlobStore
from activeseg.core.tables import Image
from tests.conftest import Stack
from tests.utils import grid_project, image_bytes, upload

INSIDE = np.ones((16, 16), bool)


class RacingStore:
    """The stack's blob store; ``between`` runs once, right after the next put."""

    def __init__(self, inner: BlobStore) -> None:
        self.inner = inner
        self.puts = 0
        self.between: Callable[[], None] | None = None

    def put(self, data: bytes) -> str:
        key = self.inner.put(data)
        self.puts += 1
        hook, self.between = self.between, None
        if hook is not None:
            hook()
        return key

    def get(self, key: str) -> bytes:
        return self.inner.get(key)


def answer(stack: Stack, store: object, image_id: int, x0: int, cls: int) -> int:
    """One task answer: the 16 x 16 tile at column ``x0`` labelled ``cls``; its revision."""
    with stack.db.session() as s:  # type: ignore[attr-defined]
        rev = labels.save_window_unlocked(
            s, store, image_id, (0, x0, 16, x0 + 16), INSIDE, np.full((16, 16), cls, np.uint8),
            source="task", author_id=None,
        )  # type: ignore[arg-type]  # fmt: skip
        return int(rev.revision)


@pytest.mark.parametrize("stack", ["postgresql"], indirect=True)
def test_an_answer_that_loses_the_race_is_made_again_on_the_winners_mask(  # type: ignore[no-untyped-def]
    stack: Stack, admin
) -> None:
    pid = grid_project(admin, region_size=16)["id"]
    [uploaded] = upload(admin, pid, ("a.png", image_bytes(32, 48, seed=5))).json()["data"]
    image_id = uploaded["image"]["id"]
    store = RacingStore(stack.store)  # type: ignore[arg-type]

    assert answer(stack, store, image_id, 32, cls=0) == 1  # alone: made once, stored once
    assert store.puts == 1
    # While this answer stores its mask (made from revision 1), another one commits
    # revision 2: this one finds the image moved on and is made again on top of it.
    store.between = lambda: answer(stack, stack.store, image_id, 16, cls=2) and None
    assert answer(stack, store, image_id, 0, cls=1) == 3
    assert store.puts == 3  # its first mask, then the one made under the lock

    with stack.db.read_session() as s:  # type: ignore[attr-defined]
        image = s.get(Image, image_id)
        assert image is not None
        assert (image.current_revision, image.labelled_pixels) == (3, 3 * 256)
        assert image.labelled_fraction == pytest.approx(3 * 256 / (32 * 48))
        mask = labels.current_mask(s, stack.store, image)  # type: ignore[arg-type]
        history = [(r.revision, r.labelled_pixels) for r in labels.history(s, image)]
    expected = np.full((32, 48), 255, np.uint8)
    expected[:16, :16], expected[:16, 16:32], expected[:16, 32:] = 1, 2, 0
    assert np.array_equal(mask, expected)
    assert history == [(1, 256), (2, 512), (3, 768)]

"""Progress bars for the course's slow calls: one helper, ``progress(...)``.

Work that takes longer than a few seconds shows a ``tqdm.auto`` bar (a widget
in Jupyter, text elsewhere). No bar is drawn where it would only be noise:
while notebooks are executed for committing or for the book (a finished bar
saved in a static page is an empty box), or when the caller says so.

Taught in: nowhere (used by the chapters' slow functions).
"""

from __future__ import annotations

import os
from typing import Iterable, Iterator, TypeVar

from exercises_lib.render import BOOK_BUILD_ENV, SMALL_OUTPUTS_ENV

T = TypeVar("T")

__all__ = ["progress", "bars_enabled"]


def bars_enabled() -> bool:
    """False while notebooks are executed for the book or for committing (``MECHINTERP_NO_PROGRESS=1`` too)."""
    return not any(os.environ.get(v) for v in (BOOK_BUILD_ENV, SMALL_OUTPUTS_ENV, "MECHINTERP_NO_PROGRESS"))


def progress(items: Iterable[T], desc: str, *, total: int | None = None, show: bool = True,
             unit: str = "it") -> Iterable[T] | Iterator[T]:
    """``items`` wrapped in a ``tqdm.auto`` bar that disappears when done (or ``items`` itself
    when ``show`` is False or bars are off, see :func:`bars_enabled`)."""
    if not show or not bars_enabled():
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, unit=unit, leave=False)

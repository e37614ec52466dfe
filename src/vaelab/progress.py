"""Progress of long work: a tqdm bar with its ETA on a terminal, one line per finished step otherwise
(so a redirected log still shows what happened and how long it took)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm import tqdm

# Seconds: a step projected to take longer than this says so before it runs on.
ANNOUNCE_SECONDS = 30.0


def to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def step(name: str, total: int, *, log: Callable[[str], None] = to_stderr, bar: bool | None = None,
         unit: str = "image") -> Iterator[Callable[[int], None]]:
    """Yield `advance(n)` for a step of `total` units; log its wall time when it ends.

    `bar`: None shows a tqdm bar only when stderr is a terminal. After the first advance, a step
    projected to take longer than ANNOUNCE_SECONDS logs its estimate ("about 6.5 min") once.
    """
    started = time.perf_counter()
    progress = tqdm(total=total, desc=name, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True,
                    disable=None if bar is None else not bar)
    done = 0
    announced = False

    def advance(n: int) -> None:
        nonlocal done, announced
        done += n
        progress.update(n)
        elapsed = time.perf_counter() - started
        if not announced and 0 < done < total:
            announced = True
            projected = elapsed * total / done
            if projected > ANNOUNCE_SECONDS:
                log(f"{name}: about {format_seconds(projected)} ({total} {unit}s; projected from the first {done})")

    try:
        yield advance
    finally:
        progress.close()
    log(f"{name}: {total} {unit}s in {format_seconds(time.perf_counter() - started)}")


def format_seconds(seconds: float) -> str:
    """'8.1 s', '6.5 min', '1.2 h'."""
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"

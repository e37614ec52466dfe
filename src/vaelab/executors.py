"""Running independent jobs (the runs of `vaelab reproduce --workers N / --ray`) on existing engines:
local worker processes (multiprocessing, one fresh process per job), or Ray tasks on a Ray cluster
(`pip install 'vaelab[ray]'`).

Each executor yields (job index, outcome) as jobs finish, in any order; an outcome is ("ok", value)
or ("error", message). A job that raises or whose process dies is reported and the others go on.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence

Outcome = tuple[str, object]
STOP_GRACE_SECONDS = 10.0


def threads_per_job(workers: int) -> int:
    """Each of `workers` concurrent jobs gets its share of this machine's cores (at least one)."""
    return max(1, (os.cpu_count() or 1) // workers)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _child(fn: Callable, job: tuple, conn) -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # started ignoring it (`_start`); Ctrl-C from here on
    try:
        conn.send(("ok", fn(*job)))
    except KeyboardInterrupt:
        conn.send(("error", "interrupted"))
    except BaseException as e:
        conn.send(("error", _describe(e) + "\n" + traceback.format_exc(limit=-3)))
    finally:
        conn.close()


def _received(receive) -> Outcome | None:
    """The child's outcome, or None if it died before sending one (poll() is also true at end of file)."""
    try:
        return receive.recv() if receive.poll() else None
    except (EOFError, OSError):
        return None


def _start(process: multiprocessing.Process) -> None:
    """Start `process` with Ctrl-C ignored until its job begins: a fresh interpreter interrupted while it
    imports prints a traceback of its own, next to the one line the caller gives."""
    if threading.current_thread() is not threading.main_thread():  # (only the main thread sets handlers)
        process.start()
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        process.start()
    finally:
        signal.signal(signal.SIGINT, previous)


def processes(fn: Callable, jobs: Sequence[tuple], workers: int) -> Iterator[tuple[int, Outcome]]:
    """fn(*job) in at most `workers` fresh local processes at a time (spawned: no state shared with
    this one). A process that dies (killed, out of memory) is reported with its signal."""
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    context = multiprocessing.get_context("spawn")
    waiting = list(range(len(jobs)))
    running: dict = {}  # sentinel -> (index, process, receiving end)
    try:
        while waiting or running:
            while waiting and len(running) < workers:
                i = waiting.pop(0)
                receive, send = context.Pipe(duplex=False)
                process = context.Process(target=_child, args=(fn, jobs[i], send), daemon=True)
                _start(process)
                send.close()
                running[process.sentinel] = (i, process, receive)
            for sentinel in multiprocessing.connection.wait(list(running)):
                i, process, receive = running.pop(sentinel)
                outcome = _received(receive)
                process.join()
                receive.close()
                if outcome is None:
                    code = process.exitcode
                    how = (f"killed by signal {signal.Signals(-code).name}" if code is not None and code < 0
                           else f"exit code {code}")
                    outcome = ("error", f"its worker process died ({how})")
                yield i, outcome
    finally:  # interrupted: stop the rest (their checkpoints stay)
        # Ctrl-C reaches the workers too (one process group): a short grace lets each save its checkpoint and
        # exit by itself (a terminated one leaves its semaphores to a warning); the rest are terminated.
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for _, process, _ in running.values():
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join()


def ray(fn: Callable, jobs: Sequence[tuple], address: str | None, cpus_per_job: int) -> Iterator[tuple[int, Outcome]]:
    """fn(*job) as Ray tasks: on the cluster at `address`, or on a local Ray started here (None).

    Tasks are not retried (a killed task is reported, and its run resumes on the next call)."""
    try:
        import ray as ray_
    except ImportError:
        raise ValueError("--ray needs Ray: pip install 'vaelab[ray]'") from None
    started_here = not ray_.is_initialized()
    if started_here:
        ray_.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        task = ray_.remote(num_cpus=cpus_per_job, max_retries=0)(fn)
        pending = {task.remote(*job): i for i, job in enumerate(jobs)}
        while pending:
            done, _ = ray_.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    yield i, ("ok", ray_.get(ref))
                except Exception as e:  # the task raised (RayTaskError) or its worker died
                    cause = getattr(e, "cause", None)
                    yield i, ("error", _describe(cause) if isinstance(cause, BaseException) else _describe(e))
    finally:
        if started_here:
            ray_.shutdown()

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
import time
import traceback
from collections.abc import Callable, Iterator, Sequence

Outcome = tuple[str, object]
STOP_GRACE_SECONDS = 10.0


def available_cores() -> int:
    """The cores this process may run on (a container or `taskset` may allow fewer than the machine has)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def threads_per_job(workers: int) -> int:
    """Each of `workers` concurrent jobs gets its share of the available cores (at least one)."""
    return max(1, available_cores() // workers)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _child(fn: Callable, job: tuple, conn) -> None:
    try:
        # Started with SIGINT blocked (`_start`): a Ctrl-C that came while this process imported is delivered
        # here, inside the try, so it ends the job before it begins.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
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
    """Start `process` with SIGINT blocked until its job begins (`_child`): a fresh interpreter interrupted
    while it imports prints a traceback of its own, next to the one line the caller gives. Blocked, not
    ignored: a Ctrl-C in that time stays pending and stops the job as soon as it starts. (The mask is
    this thread's, inherited by the spawned interpreter; this process still gets its own Ctrl-C.)"""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        process.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _stop(running: list[multiprocessing.Process], *, ask: bool) -> None:
    """Stop the running workers: each gets STOP_GRACE_SECONDS to save its checkpoint and exit by itself (a
    terminated one leaves its semaphores to a warning), then is terminated. A Ctrl-C in a terminal has
    already reached them (one process group); otherwise (`ask`) each is sent SIGINT here, once: a second
    one would interrupt its checkpoint."""
    if ask:
        for process in running:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for process in running:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.terminate()
            process.join()


def processes(fn: Callable, jobs: Sequence[tuple], workers: int) -> Iterator[tuple[int, Outcome]]:
    """fn(*job) in at most `workers` fresh local processes at a time (spawned: no state shared with
    this one). A process that dies (killed, out of memory) is reported with its signal. Workers inherit
    this process's SIGINT disposition: started with SIGINT ignored (a background job of a shell script),
    they keep ignoring it, so a Ctrl-C meant for the script's foreground leaves them be, and when asked
    to stop (`_stop`) they are terminated after the grace instead of saving mid-epoch."""
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
    except KeyboardInterrupt:  # Ctrl-C (here, or thrown in by the caller): the workers got it too
        _stop([process for _, process, _ in running.values()], ask=False)
        raise
    except BaseException:  # the caller stopped early (GeneratorExit) or this failed: ask the workers to stop
        _stop([process for _, process, _ in running.values()], ask=True)
        raise


def ray(fn: Callable, jobs: Sequence[tuple], address: str | None, cpus_per_job: int) -> Iterator[tuple[int, Outcome]]:
    """fn(*job) as Ray tasks: on the cluster at `address`, or on a local Ray started here (None).

    Tasks are not retried (a killed task is reported, and its run resumes on the next call). Stopped
    early (Ctrl-C), the unfinished tasks are cancelled: a running one gets KeyboardInterrupt and keeps its
    last checkpoint."""
    try:
        import ray as ray_
    except ImportError:
        raise ValueError("--ray needs Ray: pip install 'vaelab[ray]'") from None
    started_here = not ray_.is_initialized()
    if started_here:
        ray_.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    pending: dict = {}
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
        for ref in pending:  # (none left after a normal end)
            ray_.cancel(ref)
        if started_here:
            ray_.shutdown()

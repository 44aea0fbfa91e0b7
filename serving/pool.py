"""Server side of the worker processes: spawn, warm up, dispatch, time out, replace.

Each :class:`WorkerPool` slot holds one ``spawn``-ed :func:`serving.worker.worker_main`
process. A task runs in exactly one worker; the pipe is watched from a thread so the
event loop never blocks. A worker that crashes or passes its deadline is killed and a
fresh one is started (model load + warm-up) in the background; only the request that
was running in it fails.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from serving.metrics import Metrics
from serving.worker import Task, WorkerConfig, worker_main

log = logging.getLogger("facetrust.serving")

#: Seconds a new worker may take to load the model and pass its warm-up.
START_TIMEOUT = 180.0
#: Seconds a worker gets to honour a cancel before it is killed.
GRACE = 2.0
#: Seconds past a task's timeout (when the worker stops by itself) before it is killed.
TIMEOUT_GRACE = 0.5

Progress = Callable[[int, int], None]


class WorkerStartError(RuntimeError):
    """A worker could not load the model or failed its warm-up."""


@dataclass
class Outcome:
    """How a task ended.

    ``kind``: ``result`` (the worker answered: ``payload``), ``timeout`` (killed at the
    deadline), ``crashed`` (the process died: ``detail`` says how), ``cancelled`` (killed
    after a cancel it did not honour in time).
    """

    kind: Literal["result", "timeout", "crashed", "cancelled"]
    payload: dict[str, Any] | None = None
    detail: str = ""
    seconds: float = 0.0


@dataclass
class _Worker:
    slot: int
    proc: Any
    conn: Any
    info: dict[str, Any] = field(default_factory=dict)
    busy: bool = False
    retired: bool = False

    def alive(self) -> bool:
        return self.proc.is_alive()

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        try:
            self.conn.close()
        except OSError:
            pass


def _exit_detail(proc: Any) -> str:
    proc.join(1)
    code = proc.exitcode
    if code is None:
        return "worker stopped answering"
    if code < 0:
        try:
            import signal

            return f"worker killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"worker killed by signal {-code}"
    return f"worker exited with status {code}"


class WorkerPool:
    """``size`` worker processes running :class:`~serving.worker.Task` objects."""

    def __init__(self, config: WorkerConfig, size: int, metrics: Metrics) -> None:
        self.config = config
        self.size = size
        self.metrics = metrics
        self._ctx = multiprocessing.get_context("spawn")
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._live: dict[int, _Worker] = {}
        self._lock = threading.Lock()
        self._closing = False
        self._io = ThreadPoolExecutor(max_workers=2 * size + 2, thread_name_prefix="facetrust-pool")
        self._spawners: set[asyncio.Task[None]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        self.ever_ready = False
        self.avg_seconds = 1.0

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        """Start every slot's worker in the background (returns at once)."""
        for slot in range(self.size):
            self._respawn(slot, reason=None)
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self, interval: float = 0.5) -> None:
        """Replace idle workers that died on their own (e.g. killed from outside)."""
        while not self._closing:
            await asyncio.sleep(interval)
            with self._lock:
                dead = [w for w in self._live.values() if not w.busy and not w.alive()]
            for worker in dead:
                self._retire(worker, "died_idle")

    @property
    def ready_count(self) -> int:
        """Workers that passed their warm-up and are alive."""
        with self._lock:
            return sum(1 for w in self._live.values() if w.alive())

    async def close(self) -> None:
        """Stop every worker (politely, then by force) and the background spawners."""
        self._closing = True
        if self._watcher is not None:
            self._watcher.cancel()
        for task in list(self._spawners):
            task.cancel()
        with self._lock:
            workers = list(self._live.values())
            self._live.clear()
        for w in workers:
            try:
                w.conn.send(None)
            except OSError:
                pass
        deadline = time.monotonic() + 3
        for w in workers:
            w.proc.join(max(0.0, deadline - time.monotonic()))
            w.kill()
        self._io.shutdown(wait=False, cancel_futures=True)

    def _respawn(self, slot: int, reason: str | None) -> None:
        if self._closing:
            return
        if reason is not None:
            self.metrics.worker_restarts.labels(reason).inc()
        task = asyncio.get_running_loop().create_task(self._spawn_loop(slot))
        self._spawners.add(task)
        task.add_done_callback(self._spawners.discard)

    async def _spawn_loop(self, slot: int) -> None:
        delay = 1.0
        loop = asyncio.get_running_loop()
        while not self._closing:
            try:
                worker = await loop.run_in_executor(self._io, self._spawn_blocking, slot)
            except WorkerStartError as exc:
                self.last_error = str(exc)
                log.error("worker %d failed to start: %s (retrying in %.0fs)", slot, exc, delay)
                await asyncio.sleep(delay)
                delay = min(30.0, delay * 2)
                continue
            if self._closing:
                worker.kill()
                return
            with self._lock:
                self._live[slot] = worker
            self.ever_ready = True
            self.last_error = None
            self.metrics.workers_ready.set(self.ready_count)
            log.info(
                "worker %d ready (pid %s, warm-up %ss)", slot, worker.proc.pid, worker.info.get("warmup_s")
            )
            self._idle.put_nowait(worker)
            return

    def _spawn_blocking(self, slot: int) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=worker_main, args=(child, self.config), name=f"facetrust-worker-{slot}", daemon=True
        )
        with self._lock:
            if self._closing:
                raise WorkerStartError("server is shutting down")
            proc.start()
        child.close()
        worker = _Worker(slot, proc, parent)
        try:
            if not parent.poll(START_TIMEOUT):
                raise WorkerStartError(f"no warm-up answer within {START_TIMEOUT:g}s")
            msg = parent.recv()
        except (EOFError, OSError):
            worker.kill()
            raise WorkerStartError(_exit_detail(proc)) from None
        except WorkerStartError:
            worker.kill()
            raise
        if msg[0] != "ready":
            worker.kill()
            raise WorkerStartError(str(msg[1]))
        worker.info = dict(msg[1])
        return worker

    # -- running tasks ---------------------------------------------------------------
    async def acquire(self, timeout: float | None) -> _Worker | None:
        """An idle, live worker, or ``None`` if none frees up within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            try:
                worker = await asyncio.wait_for(self._idle.get(), remaining)
            except asyncio.TimeoutError:
                return None
            if worker.retired:
                continue  # already replaced by the watcher
            if worker.alive():
                worker.busy = True
                return worker
            self._retire(worker, "died_idle")

    def _retire(self, worker: _Worker, reason: str) -> None:
        if worker.retired:
            return
        worker.retired = True
        worker.kill()
        with self._lock:
            if self._live.get(worker.slot) is worker:
                del self._live[worker.slot]
        self.metrics.workers_ready.set(self.ready_count)
        self._respawn(worker.slot, reason)

    def _release(self, worker: _Worker, outcome: Outcome) -> None:
        worker.busy = False
        if outcome.kind == "result" and worker.alive() and not self._closing:
            self._idle.put_nowait(worker)
        elif not self._closing:
            self._retire(worker, outcome.kind)
        else:
            worker.kill()

    async def run(
        self,
        worker: _Worker,
        task: Task,
        *,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> Outcome:
        """Run ``task`` in ``worker`` (from :meth:`acquire`); the worker is released afterwards."""
        loop = asyncio.get_running_loop()
        cancel = cancel or threading.Event()
        future: Future[Outcome] = self._io.submit(self._run_blocking, worker, task, progress, cancel)
        wrapped = asyncio.wrap_future(future, loop=loop)
        self.metrics.in_progress.inc()

        def finish(fut: Future[Outcome]) -> None:
            try:
                outcome = fut.result()
            except BaseException as exc:  # noqa: BLE001 - executor shut down or a bug
                outcome = Outcome("crashed", detail=f"{type(exc).__name__}: {exc}")
            try:
                loop.call_soon_threadsafe(self._after, worker, outcome)
            except RuntimeError:  # the event loop is gone (server shut down): just stop the worker
                worker.kill()

        future.add_done_callback(finish)
        try:
            return await asyncio.shield(wrapped)
        except asyncio.CancelledError:
            cancel.set()  # the caller went away: stop the worker; finish() releases it
            raise

    def _after(self, worker: _Worker, outcome: Outcome) -> None:
        self.metrics.in_progress.dec()
        if outcome.kind == "result":
            self.avg_seconds = 0.8 * self.avg_seconds + 0.2 * outcome.seconds
        self._release(worker, outcome)

    def _run_blocking(
        self, worker: _Worker, task: Task, progress: Progress | None, cancel: threading.Event
    ) -> Outcome:
        t0 = time.monotonic()
        hard_deadline = t0 + task.timeout + TIMEOUT_GRACE
        conn = worker.conn
        try:
            conn.send(("analyze", task))
        except OSError:
            return Outcome("crashed", detail=_exit_detail(worker.proc), seconds=time.monotonic() - t0)
        cancel_deadline: float | None = None
        while True:
            now = time.monotonic()
            if cancel.is_set() and cancel_deadline is None:
                cancel_deadline = now + GRACE
                try:
                    conn.send(("cancel",))
                except OSError:
                    pass
            if cancel_deadline is not None and now >= cancel_deadline:
                worker.kill()
                return Outcome("cancelled", detail="worker did not stop in time", seconds=now - t0)
            if now >= hard_deadline:
                worker.kill()
                return Outcome("timeout", detail=f"no answer within {task.timeout:g}s", seconds=now - t0)
            wait = min(0.1, hard_deadline - now)
            try:
                if not conn.poll(wait):
                    continue
                msg = conn.recv()
            except (EOFError, OSError):
                return Outcome("crashed", detail=_exit_detail(worker.proc), seconds=time.monotonic() - t0)
            if msg[0] == "progress":
                if progress is not None:
                    progress(int(msg[1]), int(msg[2]))
                continue
            if msg[0] == "result":
                return Outcome("result", payload=msg[1], seconds=time.monotonic() - t0)

"""The micro-batcher: requests from many clients, collected for a short window into batches that one
generate call serves, on one model thread.

- A bounded queue: past `max_queue` waiting requests, `submit` raises Overloaded with a Retry-After
  estimate (the app answers 429) instead of letting the wait grow without bound.
- `mixed` batching takes requests first come, first served, whatever adapters they name (one
  forward pass for all); `per_adapter` (the baseline) takes only requests for the adapter at the head
  of the queue and swaps the active adapter between batches.
- Model changes (loading, unloading adapters) run on the same thread between batches, so a batch
  never sees a half-loaded adapter and a failed load leaves running requests alone.
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .engine import Decoder, Engine, GenRequest, GenResult
from .registry import AdapterRegistry


class Overloaded(Exception):
    def __init__(self, retry_after: float):
        super().__init__(f"server busy; retry after {retry_after:.0f} s")
        self.retry_after = retry_after


@dataclass
class _Item:
    request: GenRequest
    future: Future
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float = 0.0


class MicroBatcher:
    def __init__(self, engine: Engine, registry: AdapterRegistry, max_batch: int = 16, wait_ms: float = 50.0,
                 max_queue: int = 64, mixed: bool = True):
        self.engine = engine
        self.registry = registry
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000
        self.max_queue = max_queue
        self.mixed = mixed
        self._queue: collections.deque[_Item] = collections.deque()
        self._jobs: collections.deque[tuple[Callable[[], Any], Future]] = collections.deque()
        self._cv = threading.Condition()
        self._stop = False
        self._batch_seconds = 1.0   # a running average, for Retry-After
        self._running: dict[int, _Item] = {}   # id(request) -> its item, for the rows being decoded
        self.stats = collections.Counter()
        self._thread = threading.Thread(target=self._run, name="forge-serve-model", daemon=True)
        self._thread.start()

    # --- called from the event loop ---
    def submit(self, request: GenRequest) -> Future:
        with self._cv:
            if len(self._queue) >= self.max_queue:
                self.stats["refused"] += 1
                raise Overloaded(self.retry_after())
            item = _Item(request, Future())
            self._queue.append(item)
            self.stats["accepted"] += 1
            self._cv.notify()
        return item.future

    async def generate(self, request: GenRequest) -> GenResult:
        future = self.submit(request)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            request.cancelled.set()
            raise

    def call(self, job: Callable[[], Any]) -> Future:
        """Run `job` on the model thread between batches."""
        future: Future = Future()
        with self._cv:
            self._jobs.append((job, future))
            self._cv.notify()
        return future

    def retry_after(self) -> float:
        batches_ahead = len(self._queue) / self.max_batch + 1
        return float(min(60, max(1, math.ceil(batches_ahead * self._batch_seconds))))

    def waiting(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=30)

    # --- the model thread ---
    def _run(self) -> None:
        decoder: Decoder | None = None
        while True:
            with self._cv:
                while not self._stop and not self._queue and not self._jobs and not (decoder and decoder.rows):
                    self._cv.wait()
                if self._stop:
                    for item in self._queue:
                        item.future.set_exception(RuntimeError("server shutting down"))
                    for item in self._running.values():
                        item.future.set_exception(RuntimeError("server shutting down"))
                    return
                running = bool(decoder and decoder.rows)
                jobs = [] if running else list(self._jobs)
                if jobs:
                    self._jobs.clear()
            if jobs:
                # Model changes wait until no row is running (new rows wait for them in turn).
                for job, future in jobs:
                    self._run_job(job, future)
                continue
            if not running:
                decoder = self.engine.decoder(self.mixed)
                self._collect_window()
                batch = self._take_batch(self.max_batch, set())
            elif self.mixed and not self._jobs and self._queue and decoder.can_join():
                # Iteration-level batching: waiting requests join the running rows between decode steps.
                batch = self._take_batch(self.max_batch - len(decoder.rows), decoder.adapters())
            else:
                batch = []
            if batch:
                self._join(decoder, batch)
            if decoder.rows:
                self._step(decoder)

    def _run_job(self, job: Callable[[], Any], future: Future) -> None:
        try:
            future.set_result(job())
        except BaseException as exc:  # handed to the caller, who turns it into an HTTP status
            future.set_exception(exc)

    def _collect_window(self) -> None:
        """Wait a moment for more requests (the wait window), unless a full batch is there."""
        deadline = time.monotonic() + self.wait_s
        with self._cv:
            while len(self._queue) < self.max_batch and not self._stop and not self._jobs:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)

    def _take_batch(self, room: int, adapters: set[str]) -> list[_Item]:
        """Up to `room` waiting requests, first come first served; mixed: with at most max_loaded distinct
        adapters counting those of the running rows (`adapters`); per_adapter: the head's adapter only."""
        if room <= 0:
            return []
        with self._cv:
            items = [i for i in self._queue if not i.request.cancelled.is_set()]
            for gone in (i for i in self._queue if i.request.cancelled.is_set()):
                gone.future.cancel()
            if not items:
                self._queue.clear()
                return []
            if self.mixed:
                batch, adapters = [], set(adapters)
                for item in items:
                    name = item.request.adapter
                    if name is not None and name not in adapters and len(adapters) >= self.registry.max_loaded:
                        continue  # more distinct adapters than may be loaded at once: later
                    batch.append(item)
                    if name is not None:
                        adapters.add(name)
                    if len(batch) == room:
                        break
            else:
                head = items[0].request.adapter
                batch = [i for i in items if i.request.adapter == head][:room]
            taken = set(map(id, batch))
            self._queue = collections.deque(i for i in items if id(i) not in taken)
        return batch

    def _join(self, decoder: Decoder, batch: list[_Item]) -> None:
        try:
            needed = [i.request.adapter for i in batch if i.request.adapter is not None]
            self._ensure_loaded(sorted(decoder.adapters()) + needed, batch)
            batch = [i for i in batch if not i.future.done()]
            if not batch:
                return
            if not self.mixed:
                self.engine.use_single_adapter(batch[0].request.adapter)
            for item in batch:
                item.started_at = time.monotonic()
                self._running[id(item.request)] = item
            done = decoder.join([i.request for i in batch])
        except BaseException as exc:  # noqa: BLE001 - every waiting client gets an answer
            for item in batch:
                self._running.pop(id(item.request), None)
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        self.stats["batches"] += 1
        self.stats["rows"] += len(batch)
        self._settle(done)

    def _step(self, decoder: Decoder) -> None:
        steps, rows = decoder.steps, decoder.step_rows
        try:
            done = decoder.step()
        except BaseException as exc:  # noqa: BLE001 - the running rows fail; the server goes on
            self._settle(decoder.close(exc))
            return
        self.stats["steps"] += decoder.steps - steps
        self.stats["step_rows"] += decoder.step_rows - rows
        self._settle(done)

    def _settle(self, done: list) -> None:
        now = time.monotonic()
        for key, outcome in done:
            item = self._running.pop(key, None)
            if item is None or item.future.done():
                continue
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
                continue
            # A running average of how long a request takes once started, for Retry-After.
            self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * (now - item.started_at)
            item.future.set_result(outcome)

    def _ensure_loaded(self, needed: list[str], batch: list[_Item]) -> None:
        unload, load = self.registry.plan(needed)
        for name in unload:
            self.engine.unload_adapter(name)
        for name in load:
            info = self.registry.known.get(name)
            try:
                if info is None:
                    raise LookupError(f"adapter '{name}' was unloaded")
                self.engine.load_adapter(name, info.path)
            except Exception as exc:  # noqa: BLE001 - only the requests for this adapter fail
                self.registry.forget_loaded(name)
                for item in batch:
                    if item.request.adapter == name and not item.future.done():
                        item.future.set_exception(exc)

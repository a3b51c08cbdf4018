"""One event loop and one client for the life of a stage: `with backend.session() as session:`.

Stages are synchronous; backends are asyncio. A session runs the backend's event loop in a thread
of its own for as long as the stage runs, so the backend keeps one HTTP client (its keep-alive
connections) from the first request to the last, and requests keep flowing while the stage does
its own work (writing records, NLI checks) between results. `session.stream(requests)` yields
(index, completion) as each request finishes; a stage that writes in chunks hands all its pending
requests to one stream and takes them back chunk by chunk (`chunks`), so `backend.concurrency`
requests stay in flight across chunk boundaries instead of draining to zero at each one.

The session closes the backend's client once, when the outermost `with` ends, whatever ended it
(an error, Ctrl-C). Sessions nest: `backend.session()` inside an open one is the same session, so
a helper may open one without knowing whether its caller did. Its loop is uvloop's where
installed (the client's hot path runs faster), else asyncio's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Coroutine, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .base import ChatBackend, ChatRequest, Completion, OptionProbs, ProgressFn

T = TypeVar("T")
_END = object()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed (not on Windows), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


class BackendSession:
    """A backend's event loop, running in its own thread while the session is open."""

    def __init__(self, backend: "ChatBackend"):
        self.backend = backend
        self._depth = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def is_open(self) -> bool:
        return self._depth > 0

    # --- opening and closing ---------------------------------------------------------------------

    def open(self) -> "BackendSession":
        """Open (or enter once more) the session; each open needs one close."""
        if self._depth == 0:
            loop = new_event_loop()
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            # A daemon thread: a process killed mid-stage never waits for it.
            thread = threading.Thread(target=serve, name=f"{self.backend.name}-backend-loop", daemon=True)
            thread.start()
            ready.wait()
            self._loop, self._thread = loop, thread
        self._depth += 1
        return self

    def close(self) -> None:
        """Leave the session; the outermost close cancels what is still running, closes the
        backend's client and stops the loop."""
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

    async def _shutdown(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self.backend.aclose()
        finally:
            loop = asyncio.get_running_loop()
            await loop.shutdown_asyncgens()
            await loop.shutdown_default_executor()

    def __enter__(self) -> "BackendSession":
        return self.open()

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        try:
            self.close()
        except Exception:
            if exc_type is None:
                raise   # else the error that ended the stage is the one to report

    # --- using it ----------------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the session's loop and wait for its result (Ctrl-C cancels it)."""
        loop = self._check()
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result()
        except BaseException:
            _cancel(future)
            raise

    def stream(self, requests: Sequence["ChatRequest"],
               progress: "ProgressFn | None" = None) -> Iterator[tuple[int, "Completion"]]:
        """(index, completion) for every request, as each finishes (in any order, each once).

        The requests run on the session's loop while the caller handles what has come back;
        leaving the loop early (break, an error) cancels what is still in flight."""
        loop = self._check()
        if not requests:
            return
        results: queue.SimpleQueue = queue.SimpleQueue()

        async def pump() -> None:
            # What finishes in one turn of the loop is handed over as one batch: one wake-up of the
            # caller's thread (and one GIL hand-over) per turn, not per completion.
            batch: list = []
            handle = None

            def hand_over() -> None:
                results.put(batch.copy())
                batch.clear()

            try:
                async for item in self.backend.stream(requests):
                    if not batch:
                        handle = loop.call_soon(hand_over)
                    batch.append(item)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
                failure: Any = _Failed(exc)
            else:
                failure = _END
            if batch:
                handle.cancel()
                hand_over()
            results.put(failure)

        future = asyncio.run_coroutine_threadsafe(pump(), loop)
        try:
            while True:
                items = results.get()
                if items is _END:
                    return
                if isinstance(items, _Failed):
                    raise items.error
                for item in items:
                    if progress:
                        progress(1)
                    yield item
        finally:
            _cancel(future)

    def complete(self, requests: Sequence["ChatRequest"], progress: "ProgressFn | None" = None) -> list["Completion"]:
        """All completions, in request order."""
        out: list[Any] = [None] * len(requests)
        for index, completion in self.stream(requests, progress):
            out[index] = completion
        return out

    def chunks(self, requests: Sequence["ChatRequest"], size: int,
               progress: "ProgressFn | None" = None) -> Iterator[tuple[int, list["Completion"]]]:
        """(start, completions of requests[start:start + size]) for each chunk in order, each as
        soon as all of it has come back, while the later chunks' requests are already in flight.

        A backend whose answers depend on which requests share a call (`batch_invariant = False`:
        the local model seeds and pads each batch from its requests) is sent one chunk per call,
        exactly as a stage sending chunk by chunk did, so it gives the same answers."""
        size = max(1, size)
        if not getattr(self.backend, "batch_invariant", True):
            for start in range(0, len(requests), size):
                yield start, self.complete(requests[start:start + size], progress)
            return
        done: list[Any] = [None] * len(requests)
        missing = {start: len(requests[start:start + size]) for start in range(0, len(requests), size)}
        ready: dict[int, list[Completion]] = {}
        following = 0
        for index, completion in self.stream(requests, progress):
            done[index] = completion
            start = index - index % size
            missing[start] -= 1
            if missing[start] == 0:
                ready[start] = done[start:start + size]
            while following in ready:
                yield following, ready.pop(following)
                following += size

    def option_probs(self, requests: Sequence["ChatRequest"], options: Sequence[str],
                     prefix: str = "") -> list["OptionProbs"]:
        """backend.option_probs on the session's loop."""
        return self.run(self.backend.option_probs(requests, options, prefix))

    def _check(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the backend session is not open: use `with backend.session() as session:`")
        if threading.current_thread() is self._thread:
            raise RuntimeError("a backend session was called from its own event loop; await the backend instead")
        return self._loop


def _cancel(future: concurrent.futures.Future) -> None:
    if not future.done():
        future.cancel()


class Held:
    """A session opened for as long as `owner` lives (an NLI judge, a chat, a fact extractor):
    closed by `close()`, or when the owner is collected or the process exits, whichever is first."""

    def __init__(self, owner: Any, backend: "ChatBackend"):
        import weakref

        self.session = backend.session().open()
        self._finalize = weakref.finalize(owner, self.session.close)

    def close(self) -> None:
        self._finalize()   # once: later calls (and the owner's collection) do nothing


def held(owner: Any, backend: "ChatBackend", current: "Held | None") -> "Held":
    """`current` while its session is open, else a new Held session for `owner`."""
    return current if current is not None and current.session.is_open else Held(owner, backend)

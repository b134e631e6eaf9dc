"""Long-lived responses, bounded: stream slots per API key, and one database poller per followed job.

An open stream holds a connection and, until now, a poll of the database every half second. Per key, at most
`FTSERVE_MAX_STREAMS_PER_KEY` job-event streams and streamed generations are open at once (429 beyond). However many
clients follow one job, one task polls its events and hands them to all of them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from prometheus_client import Gauge
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from core.errors import RateLimited

log = logging.getLogger("ftserve.api")

# (job_id, after, limit) → (events oldest first, more after these?, the job's status read before them)
ReadEvents = Callable[[str, int, int], tuple[list[dict[str, Any]], bool, str]]
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
OPEN_STREAMS = Gauge("ftserve_open_streams", "Open job-event streams and streamed generations")
EVENT_POLLERS = Gauge("ftserve_event_pollers", "Jobs whose events are being polled for their followers")


class StreamSlots:
    """Open streams per API key, in this process."""

    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self._open: dict[str, int] = {}

    def acquire(self, key: str) -> None:
        if self._open.get(key, 0) >= self.per_key:
            raise RateLimited(
                f"{self.per_key} streams are already open for this API key (FTSERVE_MAX_STREAMS_PER_KEY); close "
                "one (job event streams and streamed generations count) or retry later", retry_after=5)
        self._open[key] = self._open.get(key, 0) + 1
        OPEN_STREAMS.inc()

    def release(self, key: str) -> None:
        OPEN_STREAMS.dec()
        left = self._open.get(key, 0) - 1
        if left > 0:
            self._open[key] = left
        else:
            self._open.pop(key, None)


class SlotStream(StreamingResponse):
    """A streaming response that gives its slot back however it ends: finished, failed or the client gone.

    The slot must be taken (`StreamSlots.acquire`) before the response is built, so a full key is a plain 429.
    """

    def __init__(self, content: AsyncIterator[str], *, slots: StreamSlots, key: str, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._slots, self._key = slots, key
        self._released = False
        self._on_close: list[Callable[[], Awaitable[None]]] = []

    def on_close(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Also await `callback` when the response ends (e.g. close what the body iterator reads from)."""
        self._on_close.append(callback)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._slots.release(self._key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()
            aclose = getattr(self.body_iterator, "aclose", None)
            # Run the generators' clean-up now (stop a generation, leave a feed), not when garbage collected.
            with anyio.CancelScope(shield=True):
                if aclose is not None:
                    await aclose()
                for callback in self._on_close:
                    await callback()


@dataclass
class _Feed:
    """What one job's poller has read: events with ids in (start, start + len(events)], newest last."""

    start: int
    events: list[dict[str, Any]] = field(default_factory=list)
    status: str = ""
    done: bool = False
    subscribers: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    task: asyncio.Task[None] | None = None
    error: BaseException | None = None

    @property
    def end(self) -> int:
        return self.events[-1]["id"] if self.events else self.start


class EventHub:
    """Job events for any number of followers, read from the database by one poller per job."""

    def __init__(self, read: ReadEvents, *, poll_seconds: float = 0.5, keep: int = 2000,
                 keepalive_seconds: float = 15.0, give_up_seconds: float = 60.0) -> None:
        self.read = read
        self.give_up_seconds = give_up_seconds
        self.poll_seconds = poll_seconds
        self.keep = keep
        self.keepalive_seconds = keepalive_seconds
        self._feeds: dict[str, _Feed] = {}

    async def _poll(self, job_id: str, feed: _Feed) -> None:
        EVENT_POLLERS.inc()
        failing_since: float | None = None
        loop = asyncio.get_running_loop()
        try:
            while feed.subscribers > 0:
                try:
                    events, more, status = await anyio.to_thread.run_sync(self.read, job_id, feed.end, 500)
                except Exception:
                    # A database blip (a restart) must not end every follower's stream: retry for a while.
                    now = loop.time()
                    if failing_since is None:
                        failing_since = now
                        log.warning("reading the events of %s failed; retrying", job_id, exc_info=True)
                    if now - failing_since > self.give_up_seconds:
                        raise
                    await asyncio.sleep(min(5.0, self.poll_seconds * 4))
                    continue
                failing_since = None
                async with feed.changed:
                    feed.events.extend(events)
                    if len(feed.events) > self.keep:  # followers behind the kept window read the rest themselves
                        drop = len(feed.events) - self.keep
                        feed.start = feed.events[drop - 1]["id"]
                        del feed.events[:drop]
                    feed.status = status
                    # The status is read before the events: terminal then means its last event is in.
                    feed.done = status in TERMINAL and not more
                    feed.changed.notify_all()
                if feed.done:
                    return
                if not more:
                    await asyncio.sleep(self.poll_seconds)
        except Exception as exc:  # handed to every follower, which ends its stream with it
            log.exception("polling the events of %s failed", job_id)
            async with feed.changed:
                feed.error = exc
                feed.done = True
                feed.changed.notify_all()
        finally:
            EVENT_POLLERS.dec()
            if self._feeds.get(job_id) is feed:
                del self._feeds[job_id]

    def _join(self, job_id: str, after: int) -> _Feed:
        feed = self._feeds.get(job_id)
        if feed is None or feed.done:
            feed = self._feeds[job_id] = _Feed(start=after)
        feed.subscribers += 1
        if feed.task is None or feed.task.done():
            feed.task = asyncio.get_running_loop().create_task(self._poll(job_id, feed), name=f"events-{job_id}")
        return feed

    async def follow(self, job_id: str, after: int) -> AsyncIterator[str]:
        """Server-sent events after event `after`, as they are written, ending after the terminal status event
        (with comment lines every `keepalive_seconds` so that proxies keep an idle stream open)."""
        feed = self._join(job_id, after)
        cursor = after
        try:
            while True:
                if cursor < feed.start:  # older than the feed holds: this follower reads those itself
                    events, _, _ = await anyio.to_thread.run_sync(self.read, job_id, cursor, 500)
                    events = [e for e in events if e["id"] <= feed.start] or []
                    for ev in events:
                        cursor = ev["id"]
                        yield sse(ev)
                    if not events:
                        cursor = feed.start
                    continue
                async with feed.changed:
                    pending = [e for e in feed.events if e["id"] > cursor]
                    if not pending:
                        if feed.done:
                            if feed.error is not None:  # said in-band: the stream's status is sent already
                                yield error_event(feed.error)
                            return
                        try:
                            await asyncio.wait_for(feed.changed.wait(), self.keepalive_seconds)
                        except TimeoutError:
                            pending = None  # type: ignore[assignment]
                if pending is None:
                    yield ": keepalive\n\n"
                    continue
                for ev in pending:
                    cursor = ev["id"]
                    yield sse(ev)
        finally:
            feed.subscribers -= 1


def error_event(exc: BaseException) -> str:
    from api.errors import error_body, status_of

    _, type_ = status_of(exc)
    message = getattr(exc, "message", None) or f"reading the job's events failed ({type(exc).__name__}); reconnect " \
        "with Last-Event-ID to resume"
    return f"event: error\ndata: {json.dumps(error_body(type_, message))}\n\n"


def sse(event: dict[str, Any]) -> str:
    return f"id: {event['id']}\nevent: {event['type']}\ndata: {json.dumps(event)}\n\n"

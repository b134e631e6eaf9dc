"""`Client` and `AsyncClient`: the same resources and calls, run by blocking or by awaited httpx calls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any, Self

import httpx

from ftserve._core import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    Close,
    Core,
    Done,
    Emit,
    Instruction,
    Machine,
    Options,
    Program,
    Read,
    ReadBody,
    Send,
    Sleep,
)
from ftserve._resources import Datasets, Jobs, Models, Predict

Timeout = float | httpx.Timeout | None


class BaseClient(Predict):
    def __init__(self, base_url: str | None, *, api_key: str | None, max_retries: int) -> None:
        self._core = Core(Options.resolve(base_url, api_key, max_retries))
        self.datasets = Datasets(self)
        self.jobs = Jobs(self)
        self.models = Models(self)

    @property
    def base_url(self) -> str:
        return self._core.options.base_url

    @property
    def max_retries(self) -> int:
        return self._core.options.max_retries

    def __repr__(self) -> str:  # never the API key
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    @staticmethod
    def _build(http: httpx.Client | httpx.AsyncClient, instr: Send) -> httpx.Request:
        return http.build_request(instr.method, instr.url, params=instr.params, json=instr.json, data=instr.data,
                                  files=instr.files, headers=instr.headers)


class Client(BaseClient):
    """`Client(base_url=None, *, api_key=None)`: `FTSERVE_URL` (else http://127.0.0.1:8000) and `FTSERVE_API_KEY`
    are the defaults. `http_client` lets you bring your own `httpx.Client` (proxies, transports, hooks)."""

    def __init__(self, base_url: str | None = None, *, api_key: str | None = None, timeout: Timeout = DEFAULT_TIMEOUT,
                 max_retries: int = DEFAULT_MAX_RETRIES, http_client: httpx.Client | None = None) -> None:
        super().__init__(base_url, api_key=api_key, max_retries=max_retries)
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.Client(timeout=timeout)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, program: Program[Any]) -> Any:
        steps = self._drive(program)
        while True:
            try:
                next(steps)
            except StopIteration as stop:
                return stop.value

    def _iterate(self, program: Program[Any]) -> Iterator[Any]:
        return self._drive(program)

    def _drive(self, program: Program[Any]) -> Any:
        machine = Machine(program)
        try:
            instr = machine.step()
            while not isinstance(instr, Done):
                if isinstance(instr, Emit):
                    yield instr.value
                    instr = machine.step()
                    continue
                try:
                    result = self._execute(machine, instr)
                except Exception as exc:  # handed to the program, which retries or raises its own error
                    instr = machine.step(error=exc)
                else:
                    instr = machine.step(result)
            return instr.value
        finally:
            program.close()
            for response in machine.open:
                response.close()

    def _execute(self, machine: Machine, instr: Instruction) -> Any:
        if isinstance(instr, Send):
            response = self._http.send(self._build(self._http, instr), stream=instr.stream)
            if instr.stream:
                machine.opened(response)
            return response
        if isinstance(instr, Read):
            lines = instr.kind == "lines"
            it = machine.iterator(instr, instr.response.iter_lines if lines else instr.response.iter_bytes)
            return next(it, None)
        if isinstance(instr, ReadBody):
            return instr.response.read()
        if isinstance(instr, Close):
            machine.closed(instr.response)
            return instr.response.close()
        if isinstance(instr, Sleep):
            return time.sleep(instr.seconds)
        raise TypeError(f"unknown instruction {instr!r}")


class AsyncClient(BaseClient):
    """The `Client` surface with async methods: `await client.jobs.get(id)`, `async for job in
    client.jobs.list()`, `async for chunk in client.generate(prompt, stream=True)`."""

    def __init__(self, base_url: str | None = None, *, api_key: str | None = None, timeout: Timeout = DEFAULT_TIMEOUT,
                 max_retries: int = DEFAULT_MAX_RETRIES, http_client: httpx.AsyncClient | None = None) -> None:
        super().__init__(base_url, api_key=api_key, max_retries=max_retries)
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.AsyncClient(timeout=timeout)

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def _run(self, program: Program[Any]) -> Any:  # type: ignore[override]
        async for item in self._drive(program):
            if isinstance(item, Done):
                return item.value
        raise RuntimeError("the program ended without a result")

    async def _iterate(self, program: Program[Any]) -> AsyncIterator[Any]:  # type: ignore[override]
        async for item in self._drive(program):
            if not isinstance(item, Done):
                yield item

    async def _drive(self, program: Program[Any]) -> AsyncIterator[Any]:
        """Emitted values, then `Done` with the program's result (an async generator cannot return one)."""
        machine = Machine(program)
        try:
            instr = machine.step()
            while not isinstance(instr, Done):
                if isinstance(instr, Emit):
                    yield instr.value
                    instr = machine.step()
                    continue
                try:
                    result = await self._execute(machine, instr)
                except Exception as exc:  # handed to the program, which retries or raises its own error
                    instr = machine.step(error=exc)
                else:
                    instr = machine.step(result)
            yield instr
        finally:
            program.close()
            for response in machine.open:
                await response.aclose()

    async def _execute(self, machine: Machine, instr: Instruction) -> Any:
        if isinstance(instr, Send):
            response = await self._http.send(self._build(self._http, instr), stream=instr.stream)
            if instr.stream:
                machine.opened(response)
            return response
        if isinstance(instr, Read):
            lines = instr.kind == "lines"
            it = machine.iterator(instr, instr.response.aiter_lines if lines else instr.response.aiter_bytes)
            return await anext(it, None)
        if isinstance(instr, ReadBody):
            return await instr.response.aread()
        if isinstance(instr, Close):
            machine.closed(instr.response)
            return await instr.response.aclose()
        if isinstance(instr, Sleep):
            return await asyncio.sleep(instr.seconds)
        raise TypeError(f"unknown instruction {instr!r}")

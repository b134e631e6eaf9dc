"""Predict endpoints. Models are reached only through inference/; nothing is loaded here."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from api.deps import InferenceDep, SettingsDep, ViewerDep
from api.errors import error_body, status_of
from api.responses import VALIDATED, AnswerResponse, ClassifyResponse, GenerateResponse, SummarizeResponse, errors
from api.schemas import AnswerRequest, ClassifyRequest, GenerateRequest, SummarizeRequest
from api.streams import SlotStream, StreamSlots
from core.errors import FtserveError, ValidationFailed
from core.tasks import TASKS, TaskInfo
from inference import metrics
from inference.service import InferenceService
from registry.access import Viewer

router = APIRouter(tags=["predict"])
log = logging.getLogger("ftserve.api")
UNRESOLVED = "-"  # the metrics label of a request whose model was not found
# The task each endpoint serves; its route is the task descriptor's (core/tasks.py), as the registry's "served by"
# messages and the model cards name it.
CLASSIFY, ANSWER = TASKS["classification"], TASKS["question-answering"]
SUMMARIZE, GENERATE = TASKS["summarization"], TASKS["generation"]


def _check_sizes(texts: list[str], *, max_items: int, max_chars: int) -> None:
    if len(texts) > max_items:
        raise ValidationFailed(f"inputs has {len(texts)} items; the limit is {max_items} per request")
    for i, text in enumerate(texts):
        if len(text) > max_chars:
            raise ValidationFailed(f"inputs[{i}] has {len(text)} characters; the limit is {max_chars}")


def _cap(name: str, value: int, cap: int) -> None:
    if value > cap:
        raise ValidationFailed(f"{name} is {value}; the limit is {cap}")


def _timeout(request: Request, default: float) -> float:
    """`X-Request-Timeout: <seconds>` shortens the deadline for one request; it never extends the setting's."""
    raw = request.headers.get("x-request-timeout")
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ValidationFailed(f"X-Request-Timeout must be a positive number of seconds, not {raw!r}")
    return min(value, default)


async def _run(task: TaskInfo, request: Request, service: InferenceService, viewer: Viewer, ref: str | None,
               items: list[Any], **params: Any) -> tuple[str, list[Any]]:
    """Resolve among the models the caller may use, run through the model's batcher, and record the request in
    /metrics — labelled with the resolved version only: a label per made-up model name would grow /metrics
    without bound."""
    t0 = time.perf_counter()
    model, status = UNRESOLVED, 200
    try:
        resolved = await service.resolve_async(ref, task.name, viewer)
        model = resolved.ref
        results = await service.run(resolved, items, is_disconnected=request.is_disconnected,
                                    timeout=_timeout(request, service.settings.request_timeout_seconds), **params)
        return model, results
    except BaseException as exc:
        status = status_of(exc)[0] if isinstance(exc, Exception) else 499
        raise
    finally:
        _record(task.route, model, status, t0)


def _record(endpoint: str, model: str, status: int, t0: float) -> None:
    metrics.REQUESTS.labels(endpoint=endpoint, model=model, status=str(status)).inc()
    metrics.LATENCY.labels(endpoint=endpoint, model=model).observe(time.perf_counter() - t0)


@router.post(CLASSIFY.route, response_model=ClassifyResponse, responses={**VALIDATED, **errors(404, 429, 503, 504)})
async def classify(body: ClassifyRequest, request: Request, service: InferenceDep, settings: SettingsDep,
                   viewer: ViewerDep) -> dict[str, Any]:
    texts = body.inputs if isinstance(body.inputs, list) else [body.inputs]
    _check_sizes(texts, max_items=settings.max_inputs_per_request, max_chars=settings.max_input_chars)
    # Every label ranked in the batch, cut to this request's top_k here: requests with any top_k share batches.
    ref, ranked = await _run(CLASSIFY, request, service, viewer, body.model, texts, top_k=None)
    return {"model": ref, "predictions": [r[: body.top_k] if body.top_k else r for r in ranked]}


@router.post(ANSWER.route, response_model=AnswerResponse, responses={**VALIDATED, **errors(404, 413, 429, 503, 504)})
async def answer(body: AnswerRequest, request: Request, service: InferenceDep, settings: SettingsDep,
                 viewer: ViewerDep) -> dict[str, Any]:
    try:
        items = body.items()
    except ValueError as exc:
        raise ValidationFailed(str(exc)) from exc
    _check_sizes([i.context + i.question for i in items], max_items=settings.max_inputs_per_request,
                 max_chars=settings.max_input_chars)
    pairs = [(i.question, i.context) for i in items]
    ref, answers = await _run(ANSWER, request, service, viewer, body.model, pairs)
    return {"model": ref, "answers": answers}


@router.post(SUMMARIZE.route, response_model=SummarizeResponse,
             responses={**VALIDATED, **errors(404, 413, 429, 503, 504)})
async def summarize(body: SummarizeRequest, request: Request, service: InferenceDep, settings: SettingsDep,
                    viewer: ViewerDep) -> dict[str, Any]:
    texts = body.inputs if isinstance(body.inputs, list) else [body.inputs]
    _check_sizes(texts, max_items=settings.max_inputs_per_request, max_chars=settings.max_input_chars)
    _cap("max_new_tokens", body.max_new_tokens, settings.max_new_tokens_cap)
    _cap("num_beams", body.num_beams, settings.max_num_beams_cap)
    if body.min_new_tokens > body.max_new_tokens:
        raise ValidationFailed("min_new_tokens must not exceed max_new_tokens")
    ref, summaries = await _run(
        SUMMARIZE, request, service, viewer, body.model, texts,
        max_new_tokens=body.max_new_tokens,
        min_new_tokens=body.min_new_tokens, num_beams=body.num_beams, length_penalty=body.length_penalty,
        no_repeat_ngram_size=body.no_repeat_ngram_size,
    )
    return {"model": ref, "summaries": summaries}


@router.post(GENERATE.route, response_model=GenerateResponse, responses={
    200: {"description": "JSON, or with `\"stream\": true` a `text/event-stream` of `event: token` "
                         "(`{\"text\": chunk}`) and a last `event: done` (`{text, finish_reason, tokens}`) or "
                         "`event: error` (the error shape).",
          "content": {"text/event-stream": {"schema": {"type": "string"}}}},
    **VALIDATED, **errors(404, 413, 429, 503, 504)})
async def generate(body: GenerateRequest, request: Request, service: InferenceDep, settings: SettingsDep,
                   viewer: ViewerDep) -> Any:
    try:
        prompts = body.prompts()
    except ValueError as exc:
        raise ValidationFailed(str(exc)) from exc
    _check_sizes(prompts, max_items=settings.max_inputs_per_request, max_chars=settings.max_input_chars)
    _cap("max_new_tokens", body.max_new_tokens, settings.max_new_tokens_cap)
    if body.min_new_tokens > body.max_new_tokens:
        raise ValidationFailed("min_new_tokens must not exceed max_new_tokens")
    params = body.generation_params()
    if not body.stream:
        ref, generations = await _run(GENERATE, request, service, viewer, body.model, prompts, **params)
        return {"model": ref, "generations": generations}

    # Everything that can refuse the request does so before the stream starts, as a plain status: an unknown
    # model (404), a prompt past the model's context (422), a full queue or too many streams for this key (429).
    t0 = time.perf_counter()
    model = UNRESOLVED
    slots: StreamSlots = request.app.state.stream_slots
    try:
        resolved = await service.resolve_async(body.model, GENERATE.name, viewer)
        model = resolved.ref
        slots.acquire(viewer.owner)
        try:
            chunks = await service.open_stream(resolved, prompts[0], is_disconnected=request.is_disconnected,
                                               timeout=_timeout(request, settings.request_timeout_seconds),
                                               **params)
        except BaseException:
            slots.release(viewer.owner)
            raise
    except Exception as exc:
        _record(GENERATE.route, model, status_of(exc)[0], t0)
        raise

    async def events() -> AsyncIterator[str]:
        status = 200
        try:
            async for item in chunks:
                if "done" in item:
                    yield f"event: done\ndata: {json.dumps(item['done'])}\n\n"
                else:
                    yield f"event: token\ndata: {json.dumps(item)}\n\n"
        except FtserveError as exc:
            status, type_ = status_of(exc)
            yield f"event: error\ndata: {json.dumps(error_body(type_, exc.message))}\n\n"
        except Exception as exc:  # the stream has started: report the failure in-band, not as a status
            status = 500
            log.exception("generation stream failed")
            yield f"event: error\ndata: {json.dumps(error_body('internal', type(exc).__name__))}\n\n"
        except BaseException:
            status = 499  # the client went away
            raise
        finally:
            _record(GENERATE.route, model, status, t0)

    response = SlotStream(events(), slots=slots, key=viewer.owner, media_type="text/event-stream",
                          headers={"Cache-Control": "no-cache", "X-Model": resolved.ref})
    response.on_close(chunks.aclose)
    return response

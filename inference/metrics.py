"""Prometheus metrics of the serving path (exported by `GET /metrics`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("ftserve_requests", "Predict requests by endpoint, model and status code",
                   ["endpoint", "model", "status"])
LATENCY = Histogram("ftserve_request_seconds", "Predict request latency", ["endpoint", "model"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
BATCH_SIZE = Histogram("ftserve_batch_size", "Inputs per forward pass", ["model"],
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
QUEUE_DEPTH = Gauge("ftserve_queue_depth", "Inputs waiting for a batch", ["model"])
DROPPED = Counter("ftserve_requests_dropped", "Requests dropped before compute", ["model", "reason"])
REJECTED = Counter("ftserve_requests_rejected", "Requests refused at the door", ["model", "reason"])
BATCH_FAILURES = Counter("ftserve_batch_failures", "Batches whose forward pass raised", ["model"])
LOADED_MODELS = Gauge("ftserve_loaded_models", "Full model versions loaded in memory")
LOADED_ADAPTERS = Gauge("ftserve_loaded_adapters", "LoRA adapter versions loaded on their shared bases")
LOADED_BASES = Gauge("ftserve_loaded_bases", "Base models loaded once for the LoRA adapter versions on them")
MODEL_LOAD_SECONDS = Histogram("ftserve_model_load_seconds", "Time to load a model version", ["model"],
                               buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
GENERATIONS_CANCELLED = Counter(
    "ftserve_generations_cancelled",
    "Streaming generations stopped because the client went away",
    ["model"],
)
GENERATION_TOKENS_CANCELLED = Counter(
    "ftserve_generation_cancelled_tokens",
    "New tokens produced by streaming generations before their client went away",
    ["model"],
)
GENERATION_TOKENS_RESERVED = Gauge(
    "ftserve_generation_tokens_reserved",
    "Tokens reserved by the generations running in a model's decode loop (prompt + max_new_tokens each)",
    ["model"],
)
GENERATION_TOKENS_RESERVED_MAX = Gauge(
    "ftserve_generation_tokens_reserved_max",
    "High-water mark of ftserve_generation_tokens_reserved (bounded by FTSERVE_MAX_GENERATION_TOKENS)",
    ["model"],
)

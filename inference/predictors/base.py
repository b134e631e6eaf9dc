"""The one shape of a serving predictor.

A predictor is one loaded model version. Every task's predictor is called the same way: `encode(inputs, **params)`
turns a request's inputs into what the model reads (tokenized once), and `predict(encoded, **params)` runs a batch
of encoded inputs — possibly from many requests — through the model and gives one result per input. Calling the
predictor does both (`predictor(inputs, **params)`). The batcher keys batches by the parameters that reach
`predict`; those in `input_params` travel with each encoded input instead, so requests that differ only there
still share a batch.

`model` stays a plain attribute that is called as `model(**features)` (or `model.generate(...)`), so the service
may replace it after loading (half precision on a GPU, int8, another runtime). A LoRA adapter version's predictor
is given its model instead of loading one (inference/adapters.py: the shared base, run with this adapter); then a
batch may hold inputs encoded by several adapter predictors of one base (`Encoded.source`), and `predict` runs them
in one forward pass, each row with its own adapter (`adapter_names`), and post-processes each input with what its
own predictor knows (labels, answer length, tokenizer).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from core.tasks import TASKS

# The tokenizer outputs a forward pass reads (offsets and overflow mappings are for post-processing only).
FEATURES = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(eq=False)
class Encoded:
    """One request input as the model reads it: its rows of token features (one row; one per window for a long QA
    context) and what turning the model's output back into a result needs (`meta`)."""

    rows: list[dict[str, list[int]]]
    meta: Any = None
    # The predictor that encoded it, when that may not be the one that runs it: an adapter version's, in a batch of
    # inputs for several adapters of one shared base. None: the predictor running it.
    source: Predictor | None = None

    @property
    def lengths(self) -> list[int]:
        return [len(row["input_ids"]) for row in self.rows]


def one_row_each(enc: Any, count: int) -> list[Encoded]:
    """A tokenizer's output for `count` texts as `count` one-row inputs."""
    keys = [k for k in FEATURES if k in enc]
    return [Encoded([{k: enc[k][i] for k in keys}]) for i in range(count)]


def adapter_rows(encoded: Sequence[Encoded], owners: Sequence[int]) -> list[str] | None:
    """The adapter of each row (`owners`: each row's input, from `features_of`), or None when no input comes from
    an adapter predictor (a full model's batch)."""
    names = [getattr(getattr(item.source, "model", None), "adapter_name", None) for item in encoded]
    if all(name is None for name in names):
        return None
    return [names[i] for i in owners]


def features_of(encoded: Sequence[Encoded]) -> tuple[dict[str, list[list[int]]], list[int]]:
    """The rows of `encoded` as unpadded tokenizer features ({name: [row, …]}), and for each row the index of the
    input it belongs to."""
    keys = [k for k in FEATURES if encoded and encoded[0].rows and k in encoded[0].rows[0]]
    features: dict[str, list[list[int]]] = {k: [] for k in keys}
    owners: list[int] = []
    for index, item in enumerate(encoded):
        for row in item.rows:
            for k in keys:
                features[k].append(row[k])
            owners.append(index)
    return features, owners


def positions(config: dict[str, Any]) -> int | None:
    """The longest input a model's config.json allows (its position embeddings), if it says."""
    for key in ("max_position_embeddings", "n_positions"):
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def capped(value: int, config: dict[str, Any]) -> int:
    """`value` tokens, or fewer when the model's positions end before."""
    limit = positions(config)
    return min(value, limit) if limit else value


class Predictor(ABC):
    """A loaded model version: its tokenizer, its model (on `device`, in eval mode) and the serving parameters that
    training chose (`training_params.json`'s "serving")."""

    task: ClassVar[str]  # its descriptor (core/tasks.py) names the transformers Auto class the model loads with
    # One short forward per batch (encoders): a batch never waits to fill; it is what queued while the last ran.
    zero_wait: ClassVar[bool] = False
    # Request parameters that `encode` attaches to each input rather than `predict` reading them for the batch.
    input_params: ClassVar[frozenset[str]] = frozenset()

    sample_input: ClassVar[Any] = "warm-up"  # an input `encode` takes, for `warm_up`
    # FTSERVE_ONNX (inference/onnx_runtime.py): the outputs an ONNX Runtime export of the model gives and the
    # transformers output class (transformers.modeling_outputs) `predict` reads them from. None: always torch (one
    # encoder forward per batch is what the export serves; generate loops stay torch).
    onnx_outputs: ClassVar[tuple[str, ...]] = ()
    onnx_output_class: ClassVar[str] = ""

    def __init__(self, model_dir: Path, *, device: str = "cpu", model: Any = None, tokenizer: Any = None) -> None:
        """`model`, `tokenizer`: already loaded (an adapter version's model on its shared base, a tokenizer shared
        with the base's other adapters); else the folder's are loaded."""
        from training.modeling import load_model, load_tokenizer
        from training.params_file import read_training_params

        self.device = device
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(str(model_dir))
        if model is None:
            import transformers

            auto_class = getattr(transformers, TASKS[self.task].auto_class)
            model = load_model(auto_class, str(model_dir)).to(device).eval()
        self.model = model
        # Batches that may run at once (inference/batcher.py): 1 for torch, whose forward already spreads over every
        # core; 2 for ONNX Runtime (inference/onnx_runtime.py::LANES).
        self.lanes = 1
        self.serving: dict[str, Any] = read_training_params(Path(model_dir)).get("serving", {})

    def by(self, item: Encoded) -> Predictor:
        """The predictor whose settings (labels, answer length, tokenizer) apply to `item`."""
        return item.source or self

    def warm_up(self) -> None:
        """One encode before serving: it sets the fast tokenizer's truncation and padding state, which every later
        encode then only reads. Request threads encode at once, and changing that state while another thread
        encodes with it fails ("Already borrowed")."""
        self.encode([self.sample_input])

    @abstractmethod
    def encode(self, inputs: Sequence[Any], **params: Any) -> list[Encoded]:
        """The request's inputs tokenized, one `Encoded` per input; raises ValidationFailed for an input the model
        cannot take."""

    @abstractmethod
    def predict(self, encoded: Sequence[Encoded], **params: Any) -> list[Any]:
        """One result per encoded input (the inputs of several requests, batched)."""

    @classmethod
    def imported_serving(cls, config: dict[str, Any]) -> dict[str, Any]:
        """The "serving" values this predictor reads, for a model trained elsewhere (an import without them), from
        its config.json alone; raises ValidationFailed for a config it cannot serve."""
        return {}

    @classmethod
    def padded_tokens(cls, encoded: Sequence[Encoded], **params: Any) -> int:
        """The tokens `predict(encoded, **params)` computes, padding included: what FTSERVE_MAX_BATCH_TOKENS bounds.
        Encoders forward every row (a QA window is a row) in length groups (inference/batching.py)."""
        from inference.batching import padded_tokens

        return padded_tokens([n for item in encoded for n in item.lengths])

    @classmethod
    def run_order(cls, encoded: Sequence[Encoded], **params: Any) -> list[list[int]]:
        """How a batch runs: groups of indices into `encoded`, one `predict` call each, in this order; the batcher
        answers each request as soon as the groups holding its inputs are done. Default: one call (an encoder's
        forward is short, and `predict` groups rows by length inside it)."""
        return [list(range(len(encoded)))]

    @classmethod
    def batch_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """The request parameters that `predict` reads (those not in `input_params`)."""
        return {k: v for k, v in params.items() if k not in cls.input_params}

    def __call__(self, inputs: Sequence[Any], **params: Any) -> list[Any]:
        return self.predict(self.encode(inputs, **params), **self.batch_params(params))

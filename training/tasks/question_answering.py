"""Extractive question answering (SQuAD v1.1 style) with a span-prediction head.

Long contexts are read in overlapping windows (`max_length`, `doc_stride`); answers are mapped from
characters to token positions for training, and back through offsets by the shared numpy
post-processing (training/qa_postprocess.py) for evaluation and serving alike.

Malformed rows (an answer that does not occur at its `answer_start`) are rejected with their row
numbers rather than dropped: silently training on fewer rows hides a broken export.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import ValidationFailed
from registry.datafiles import DatasetProfile
from training.batching import grouped_forward
from training.qa_postprocess import Window, best_spans, window_from_encoding
from training.spec import CommonParams, QuestionAnsweringParams
from training.tasks.base import EventFn, Prepared, Task
from training.text_metrics import squad_metrics

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MAX_LISTED = 5


def _answers(value: Any) -> tuple[list[str], list[int]] | None:
    if not isinstance(value, dict):
        return None
    texts, starts = value.get("text"), value.get("answer_start")
    if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts) or not texts:
        return None
    if not all(isinstance(t, str) for t in texts) or not all(isinstance(s, int) for s in starts):
        return None
    return texts, starts


def _windows(tokenizer: Any, questions: list[str], contexts: list[str], *, max_length: int, stride: int) -> Any:
    return tokenizer(
        [q.lstrip() for q in questions], contexts, truncation="only_second", max_length=max_length, stride=stride,
        return_overflowing_tokens=True, return_offsets_mapping=True,
    )


class QuestionAnsweringTask(Task):
    name = "question-answering"
    main_metric = "f1"
    needs_rows = True  # an answer's offset into its context is only known from the row

    def check_profile(self, profile: DatasetProfile, columns: dict[str, str], *, what: str) -> None:
        found = [(hit[0], order, field) for order, field in enumerate(("question", "context"))
                 if (hit := profile.first_row(columns[field], other_than={"string"})) is not None]
        if found:
            row, _, field = min(found)
            raise ValidationFailed(f"{what}: row {row}: field '{field}' is empty")

    def check_rows(self, rows: Iterable[dict[str, Any]], *, uploaded: bool, what: str) -> None:
        bad: list[str] = []
        for number, row in enumerate(rows, start=1):
            question, context = row.get("question"), row.get("context")
            if not isinstance(question, str) or not question.strip():
                bad.append(f"row {number}: field 'question' is empty")
            elif not isinstance(context, str) or not context.strip():
                bad.append(f"row {number}: field 'context' is empty")
            else:
                parsed = _answers(row.get("answers"))
                if parsed is None:
                    bad.append(f"row {number}: field 'answers' must be "
                               '{"text": [...], "answer_start": [...]} with lists of equal, non-zero length')
                else:
                    for text, start in zip(*parsed, strict=True):
                        if context[start:start + len(text)] != text:
                            bad.append(f"row {number}: answer {text!r} does not occur at answer_start {start}")
                            break
            if len(bad) > MAX_LISTED:
                break
        if bad:
            more = " (and possibly more)" if len(bad) > MAX_LISTED else ""
            raise ValidationFailed(f"{what}: " + "; ".join(bad[:MAX_LISTED]) + more)

    def prepare(
        self,
        *,
        model_source: str,
        tokenizer: PreTrainedTokenizerBase,
        params: CommonParams,
        train_rows: list[dict[str, Any]],
        eval_rows: list[dict[str, Any]],
        on_event: EventFn,
    ) -> Prepared:
        import datasets
        from transformers import AutoModelForQuestionAnswering, DataCollatorWithPadding

        from training.modeling import effective_max_length, load_model

        assert isinstance(params, QuestionAnsweringParams)
        if not getattr(tokenizer, "is_fast", False):
            raise ValidationFailed("question answering needs a model with a fast tokenizer (offset mappings)")
        max_length = effective_max_length(tokenizer, params.max_length)
        if params.doc_stride >= max_length // 2:
            raise ValidationFailed(
                f"hyperparameters.doc_stride ({params.doc_stride}) must be less than half of max_length "
                f"({max_length} for this model)")
        model = load_model(AutoModelForQuestionAnswering, model_source)

        def encode(rows: list[dict[str, Any]]) -> tuple[dict[str, list[Any]], list[Window]]:
            enc = _windows(tokenizer, [r["question"] for r in rows], [r["context"] for r in rows],
                           max_length=max_length, stride=params.doc_stride)
            starts: list[int] = []
            ends: list[int] = []
            windows: list[Window] = []
            for i, offsets in enumerate(enc["offset_mapping"]):
                example = int(enc["overflow_to_sample_mapping"][i])
                seq_ids = enc.sequence_ids(i)
                windows.append(window_from_encoding(example, offsets, seq_ids))
                text, start_char = rows[example]["answers"]["text"][0], rows[example]["answers"]["answer_start"][0]
                end_char = start_char + len(text)
                ctx = [j for j, s in enumerate(seq_ids) if s == 1]
                cls_index = 0
                if not ctx or offsets[ctx[0]][0] > start_char or offsets[ctx[-1]][1] < end_char:
                    starts.append(cls_index)  # answer not inside this window
                    ends.append(cls_index)
                    continue
                s = next(j for j in ctx if offsets[j][1] > start_char)
                e = next(j for j in reversed(ctx) if offsets[j][0] < end_char)
                starts.append(s)
                ends.append(e)
            columns = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
            return {**columns, "start_positions": starts, "end_positions": ends}, windows

        train_cols, _ = encode(train_rows)
        eval_cols, eval_windows = encode(eval_rows)
        contexts = [r["context"] for r in eval_rows]
        golds = [list(r["answers"]["text"]) for r in eval_rows]

        def compute_metrics(pred: Any) -> dict[str, float]:
            start_logits, end_logits = pred.predictions[:2]
            spans = best_spans(contexts=contexts, windows=eval_windows, start_logits=np.asarray(start_logits),
                               end_logits=np.asarray(end_logits), max_answer_length=params.max_answer_length)
            return squad_metrics([s.answer for s in spans], golds)

        return Prepared(
            model=model,
            train=datasets.Dataset.from_dict(train_cols),
            eval=datasets.Dataset.from_dict(eval_cols),
            collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=compute_metrics,
            serving_params={"max_length": max_length, "doc_stride": params.doc_stride,
                            "max_answer_length": params.max_answer_length},
        )


    def preprocessing(self, *, serving: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
        return {
            "tokenizer": type(tokenizer).__name__,
            "max_length": serving.get("max_length"),
            "doc_stride": serving.get("doc_stride"),
            "max_answer_length": serving.get("max_answer_length"),
            "truncation": "only the context (truncation='only_second'): a long context is read in overlapping "
                          "windows of max_length tokens that overlap by doc_stride tokens",
            "padding": "dynamic: each batch is padded to its longest window (DataCollatorWithPadding)",
            "answers": "the first answer of each row is the training target; a window that does not contain it "
                       "points at the first token ([CLS]); evaluation compares against every listed answer",
        }


class QuestionAnsweringPredictor:
    """(question, context) pairs in, best spans out: {"answer", "score", "start", "end"}."""

    def __init__(self, model_dir: Path, *, device: str = "cpu") -> None:
        from transformers import AutoModelForQuestionAnswering

        from training.modeling import load_model, load_tokenizer
        from training.params_file import read_training_params

        self.tokenizer = load_tokenizer(str(model_dir))
        self.model = load_model(AutoModelForQuestionAnswering, str(model_dir)).to(device).eval()
        self.device = device
        serving = read_training_params(model_dir).get("serving", {})
        self.max_length = int(serving.get("max_length", 384))
        self.doc_stride = int(serving.get("doc_stride", 128))
        self.max_answer_length = int(serving.get("max_answer_length", 30))

    def answer(self, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
        import torch

        questions = [q for q, _ in pairs]
        contexts = [c for _, c in pairs]
        enc = _windows(self.tokenizer, questions, contexts, max_length=self.max_length, stride=self.doc_stride)
        windows = [window_from_encoding(int(enc["overflow_to_sample_mapping"][i]), offsets, enc.sequence_ids(i))
                   for i, offsets in enumerate(enc["offset_mapping"])]
        features = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        start_logits: list[np.ndarray] = [np.empty(0)] * len(windows)
        end_logits: list[np.ndarray] = [np.empty(0)] * len(windows)
        # Windows of similar length forward together (rows come back ragged; post-processing reads each
        # window's own positions only).
        with torch.inference_mode():
            for group, out in grouped_forward(self.tokenizer, self.model, features, self.device):
                starts, ends = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
                for row, i in enumerate(group):
                    start_logits[i], end_logits[i] = starts[row], ends[row]
        spans = best_spans(contexts=contexts, windows=windows, start_logits=start_logits, end_logits=end_logits,
                           max_answer_length=self.max_answer_length)
        return [{"answer": s.answer, "score": s.score, "start": s.start, "end": s.end} for s in spans]

"""Extractive question answering (SQuAD v1.1 style) with a span-prediction head.

Long contexts are read in overlapping windows (`max_length`, `doc_stride`); answers are mapped from
characters to token positions for training, and back through offsets by the shared numpy
post-processing (training/qa_postprocess.py) for evaluation and serving alike
(inference/predictors/question_answering.py).

Malformed rows (an answer that does not occur at its `answer_start`) are rejected with their row
numbers rather than dropped: silently training on fewer rows hides a broken export.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import ValidationFailed
from registry.datafiles import DatasetProfile
from training.qa_postprocess import Window, best_spans, encode_windows, window_from_encoding
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
            enc = encode_windows(tokenizer, [r["question"] for r in rows], [r["context"] for r in rows],
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


    def card_uses(self, serving: dict[str, Any]) -> str:
        return ("Extracts the answer to a question as a span of the given context (SQuAD v1.1 style, served by "
                f"`{self.route}`). It always returns a span: it was not trained to say that the context holds no "
                "answer.")

    def card_context_length(self, serving: dict[str, Any]) -> str:
        max_length = serving.get("max_length")
        if max_length is None:
            return "not recorded"
        return (f"{max_length} tokens per window (question + context); longer contexts are read in windows "
                f"overlapping by {serving.get('doc_stride')} tokens")

    def card_snippet(self, serving: dict[str, Any], *, load: list[str]) -> list[str]:
        return [
            "import torch",
            "from transformers import AutoModelForQuestionAnswering, AutoTokenizer", "", *load,
            "tokenizer = AutoTokenizer.from_pretrained(model_id)",
            "model = AutoModelForQuestionAnswering.from_pretrained(model_id)",
            'question, context = "Who won?", "The Broncos won the game."',
            f"# One window; ftserve's {self.route} reads longer contexts in overlapping windows (doc_stride "
            f"{serving.get('doc_stride', 128)}).",
            'enc = tokenizer(question, context, truncation="only_second", '
            f'max_length={serving.get("max_length", 384)}, return_offsets_mapping=True, return_tensors="pt")',
            'offsets = enc.pop("offset_mapping")[0]',
            "with torch.no_grad():",
            "    out = model(**enc)",
            "in_context = [i for i, s in enumerate(enc.sequence_ids(0)) if s == 1]",
            "start = max(in_context, key=lambda i: out.start_logits[0, i])",
            "end = max((i for i in in_context if start <= i < start + "
            f"{serving.get('max_answer_length', 30)}), key=lambda i: out.end_logits[0, i])",
            "print(context[offsets[start][0]:offsets[end][1]])"]

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


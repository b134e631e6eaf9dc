"""Tiny models built at test time and placed in a Hugging Face cache layout under hub ids.

With HF_HUB_OFFLINE=1, `from_pretrained("ftserve-test/tiny-bert")` resolves them like downloaded
models, so the real hub code path is exercised without a network.
"""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.hfcache import place_in_cache

TINY_BERT = "ftserve-test/tiny-bert"


def cache_model(hf_home: Path, repo_id: str, tokenizer: Any, build: Callable[[], Any]) -> Path:
    """Seed torch, build the model and place it with its tokenizer in `hf_home` as hub model `repo_id`."""
    import torch

    torch.manual_seed(0)
    model = build()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)
        return place_in_cache(Path(tmp), hf_home=hf_home, repo_id=repo_id)


def _corpus(shared_data: Path) -> list[str]:
    texts: list[str] = []
    for name in ("classification/train.csv", "classification-multiclass/train.csv"):
        with (shared_data / name).open(encoding="utf-8") as f:
            texts += [row["text"] for row in csv.DictReader(f)]
    return texts


def build_tiny_bert(shared_data: Path, hf_home: Path) -> Path:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(_corpus(shared_data), trainers.WordPieceTrainer(vocab_size=2000, special_tokens=specials))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast = BertTokenizerFast(tokenizer_object=tok, model_max_length=128)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    return cache_model(hf_home, TINY_BERT, fast, lambda: BertModel(config))


def build_hub_dataset(hf_home: Path, repo_id: str, *, texts: list[str], labels: list[int], names: list[str]) -> None:
    """A classification dataset in the `datasets` cache layout, so that with HF_HUB_OFFLINE=1
    `load_dataset(repo_id, split="train")` finds it like a dataset loaded once before."""
    import os

    os.environ["HF_HOME"] = str(hf_home)  # before `datasets` reads its config
    import datasets
    from datasets.arrow_writer import ArrowWriter

    namespace, name = repo_id.split("/")
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    root = hf_home / "datasets" / f"{namespace}___{name}" / "default" / "0.0.0" / ("0" * 16)
    root.mkdir(parents=True, exist_ok=True)
    with ArrowWriter(path=str(root / f"{name}-train.arrow"), features=features) as writer:
        for text, label in zip(texts, labels, strict=True):
            writer.write({"text": text, "label": label})
        writer.finalize()
    split = datasets.SplitInfo(name="train", num_examples=len(texts), dataset_name=name)
    info = datasets.DatasetInfo(features=features, dataset_name=name, config_name="default",
                                splits=datasets.SplitDict({"train": split}))
    info.write_to_directory(str(root))


HUB_REVIEWS = "ftserve-test/tinyreviews"
HUB_ONE_CLASS = "ftserve-test/oneclass"


def build_test_hub_datasets(hf_home: Path) -> None:
    good = ["a wonderful , moving film", "great acting and a fine story", "a joy to watch", "warm and funny",
            "one of the best films of the year", "smart , sharp and lovely"]
    bad = ["dull and lifeless", "a tedious mess", "badly acted and far too long", "boring from start to end",
           "a waste of time", "flat , clumsy and cold"]
    texts = [t for pair in zip(good * 4, bad * 4, strict=True) for t in pair]
    labels = [i % 2 for i in range(len(texts))]
    # ClassLabel ids 0/1 with names: a job must see "positive"/"negative", not "0"/"1".
    build_hub_dataset(hf_home, HUB_REVIEWS, texts=texts, labels=[1 - x for x in labels], names=["negative", "positive"])
    build_hub_dataset(hf_home, HUB_ONE_CLASS, texts=good * 3, labels=[0] * 18, names=["positive"])


TINY_T5 = "ftserve-test/tiny-t5"


def build_tiny_t5(shared_data: Path, hf_home: Path) -> Path:
    """A 2+2-layer T5 with a Unigram tokenizer trained on the summarization corpus."""
    import json

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5Config, T5ForConditionalGeneration, T5TokenizerFast

    texts: list[str] = []
    with (shared_data / "summarization" / "train.jsonl").open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            texts += [row["document"], row["summary"]]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" {2,}", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    # T5's order: pad 0, eos 1, unk 2; the pad id doubles as the decoder start token.
    specials = ["<pad>", "</s>", "<unk>"]
    tok.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=2000, special_tokens=specials, unk_token="<unk>"))
    eos_id = tok.token_to_id("</s>")
    # T5 appends </s> to every input and target; the tokenizer, not the caller, must do it.
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos_id)]
    )
    fast = T5TokenizerFast(tokenizer_object=tok, extra_ids=0, model_max_length=512)
    pad_id = fast.pad_token_id
    config = T5Config(vocab_size=len(fast), d_model=32, d_ff=64, d_kv=16, num_layers=2, num_decoder_layers=2,
                      num_heads=2, decoder_start_token_id=pad_id, pad_token_id=pad_id, eos_token_id=eos_id)
    return cache_model(hf_home, TINY_T5, fast, lambda: T5ForConditionalGeneration(config))


def sentiment_csv(rows: int) -> bytes:
    """A two-label CSV (`text,label`) of `rows` alternating rows, for runs on `save_tiny_classifier`."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["text", "label"])
    for i in range(rows):
        writer.writerow(["a great film" if i % 2 else "a bad movie", "positive" if i % 2 else "negative"])
    return out.getvalue().encode()


def save_tiny_classifier(out: Path) -> Path:
    """A 1-layer BERT classifier (labels negative/positive) with a tiny WordPiece vocabulary, saved with
    save_pretrained (safetensors) into `out`: an archive to import, built in a second."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
             *["a", "the", "film", "great", "dull", "good", "bad", "movie", "was", "is", "and", "it", "of", "to"]]
    with tempfile.TemporaryDirectory() as tmp:
        vocab = Path(tmp) / "vocab.txt"
        vocab.write_text("\n".join(words) + "\n")
        tokenizer = BertTokenizerFast(vocab_file=str(vocab), model_max_length=64)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64,
                        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    tokenizer.save_pretrained(out)
    BertForSequenceClassification(config).save_pretrained(out)
    return out



def _tiny_wordpiece() -> Any:
    """A BERT tokenizer of a few dozen English words (the rest is [UNK]), built with `tokenizers`: given a
    `vocab_file`, transformers 5's BertTokenizerFast keeps only its special tokens."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "?", ",", ".", "a", "the", "film", "great", "dull", "good",
             "bad", "movie", "was", "is", "and", "it", "of", "to", "what", "end", "not", "very", "story", "plot",
             "actors", "acting", "long", "short", "fun", "funny", "boring", "loved", "hated", "best", "worst"]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return BertTokenizerFast(tokenizer_object=tok, model_max_length=64, pad_token="[PAD]", unk_token="[UNK]",
                             cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def save_tiny_encoder(out: Path, *, task: str) -> Path:
    """A 2-layer BERT for "classification" (labels negative/positive) or "question-answering" with a WordPiece
    tokenizer of 40 words (`_tiny_wordpiece`), saved with save_pretrained (safetensors) into `out`.

    Random, but decisive, so that an approximation (int8) is checked on answers it could only flip by being
    wrong: a default random model's scores are all ~0.5 and its best spans win by hundredths of a logit.
    - classification: weights drawn wide (initializer_range 0.2): scores from ~0.55 to ~0.75 by text.
    - question-answering: each word's embedding is a direction at its own angle in one plane, which the
      (near-identity) layers keep, and the head reads the start logit from one axis of that plane and the end
      logit from the other: words differ by whole logits, so a context of distinct words has one clear span.
    """
    import math

    import torch
    from transformers import BertConfig, BertForQuestionAnswering, BertForSequenceClassification

    tokenizer = _tiny_wordpiece()
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64,
                        initializer_range=0.2 if task == "classification" else 0.02,
                        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    if task == "classification":
        model: Any = BertForSequenceClassification(config)
    else:
        model = BertForQuestionAnswering(config)
        with torch.no_grad():
            plane = torch.randn(2, config.hidden_size)
            plane -= plane.mean(dim=1, keepdim=True)  # zero-mean, so LayerNorm keeps the directions
            u = plane[0] / plane[0].norm()
            v = plane[1] - (plane[1] @ u) * u
            v /= v.norm()
            angles = torch.randperm(config.vocab_size).float() * (2 * math.pi / config.vocab_size)
            model.bert.embeddings.word_embeddings.weight.copy_(
                10 * (torch.cos(angles)[:, None] * u + torch.sin(angles)[:, None] * v))
            model.qa_outputs.weight.copy_(torch.stack([u, v]))
            model.qa_outputs.bias.zero_()
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    return out

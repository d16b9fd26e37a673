"""Measuring training memory on CPU: the bytes autograd keeps for backward (a saved-tensors hook, each
storage once, parameters excluded), by region, and one real S2T training step of a buildable preset
(parameters, gradients, AdamW state, activations with and without gradient checkpointing). bench/memory.py
tabulates it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# ---- counting what autograd keeps ---------------------------------------------------------------------

@dataclass
class Ledger:
    """Bytes saved for backward, by region (llm / encoder blocks, the rest) and kind (vocab-sized or not)."""

    vocab: int
    region: str = "other"
    seen: set[int] = field(default_factory=set)
    params: set[int] = field(default_factory=set)
    bytes: dict[str, int] = field(default_factory=dict)

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        """The saved-tensors pack hook: count each storage once, parameters never."""
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if t.device.type != "meta" and key not in self.seen and key not in self.params:
            self.seen.add(key)
            kind = "vocab" if t.dim() and t.shape[-1] == self.vocab else "rest"
            name = f"{self.region}/{kind}"
            self.bytes[name] = self.bytes.get(name, 0) + storage.nbytes()
        return t

    def total(self, prefix: str = "") -> int:
        """Bytes of the regions whose name starts with `prefix`."""
        return sum(v for k, v in self.bytes.items() if k.startswith(prefix))


@contextlib.contextmanager
def saved_bytes(model: nn.Module, vocab: int, blocks: dict[str, list[nn.Module]]) -> Iterator[Ledger]:
    """Count the bytes autograd saves inside the block (`blocks`: region name → the modules whose saves
    go to it)."""
    ledger = Ledger(vocab, params={p.untyped_storage().data_ptr() for p in model.parameters()})
    handles = []
    for region, modules in blocks.items():
        for m in modules:
            handles.append(m.register_forward_pre_hook(lambda *_, r=region: setattr(ledger, "region", r)))
            handles.append(m.register_forward_hook(lambda *_: setattr(ledger, "region", "other")))
    try:
        with torch.autograd.graph.saved_tensors_hooks(ledger.pack, lambda t: t):
            yield ledger
    finally:
        for h in handles:
            h.remove()


def block_regions(model: nn.Module) -> dict[str, list[nn.Module]]:
    """The transformer blocks of an S2T model's LLM and encoder (what FSDP shards, checkpointing redoes)."""
    from tasks.fsdp import shard_units

    return {name: shard_units(part) for name, part in (("llm", model.llm), ("encoder", model.encoder))}


# ---- measured: a real training step of a buildable preset ---------------------------------------------

def speech_rows(n: int, seed: int = 0, seconds: float = 2.0) -> list[dict]:
    """`n` corpus-like rows: `seconds` of seeded noise as the question audio, QA text from the workload."""
    from bench.workload import qa_pairs

    rng = np.random.default_rng(seed)
    return [{"id": r["id"], "question_text": r["question"], "answer_text": r["answer"], "sample_rate": 16_000,
             "question_audio": (rng.standard_normal(int(seconds * 16_000)) * 3000).astype(np.int16)}
            for r in qa_pairs(n, seed)]


def param_bytes(model: nn.Module) -> dict[str, int]:
    """Parameter counts and bytes, frozen and trained, and the LoRA parameters among the trained."""
    out = dict.fromkeys(("frozen", "trained", "frozen_bytes", "trained_bytes", "lora"), 0)
    for name, p in model.named_parameters():
        kind = "trained" if p.requires_grad else "frozen"
        out[kind] += p.numel()
        out[f"{kind}_bytes"] += p.numel() * p.element_size()
        out["lora"] += p.numel() if "lora_" in name else 0
    return out


def measure(preset_name: str, overrides: dict, llm_dir: Path, batch: int, seconds: float) -> dict[str, Any]:
    """One S2T training step of `batch` rows of `seconds` of audio on CPU (float32): parameter, gradient,
    AdamW and activation bytes (and the activations again with gradient checkpointing), and the shapes."""
    from models.presets import resolve_preset
    from models.s2t import build_s2t
    from tasks.collate import make_collator
    from tasks.train import TrainConfig
    from tasks.train_utils import enable_gradient_checkpointing, make_optimizer

    torch.manual_seed(0)
    model = build_s2t(resolve_preset(preset_name, **overrides), llm_dir).train()
    inputs = make_collator("s2t", model)(speech_rows(batch, seconds=seconds))
    vocab = model.llm.get_input_embeddings().num_embeddings
    kept: list[int] = []
    hook = model.adapter.register_forward_hook(lambda m, a, out: kept.append(int(out.mask.shape[1])))
    ledgers = []
    for checkpointing in (False, True):
        if checkpointing:
            enable_gradient_checkpointing(model)
        torch.manual_seed(1)
        with saved_bytes(model, vocab, block_regions(model)) as ledger:
            loss = model(**inputs)["loss"]
        ledgers.append(ledger)
        if not checkpointing:
            loss.backward()
            grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters()
                        if p.grad is not None)
            optimizer = make_optimizer(model, TrainConfig(stage="s2t", corpus_dir="-", out_dir="-"))
            optimizer.step()
            state = [t for st in optimizer.state.values() for t in st.values() if isinstance(t, torch.Tensor)]
        del loss
    hook.remove()
    frames = int(inputs["audio_lengths"].max() + 1) // 2
    answer = int((inputs["labels"] != -100).sum())
    return {"params": {**param_bytes(model), **fsdp_groups(model)}, "grad_bytes": grads,
            "optimizer_bytes": sum(t.numel() * t.element_size() for t in state),
            "activations": ledgers[0].total(), "activations_gc": ledgers[1].total(),
            "regions": dict(sorted(ledgers[0].bytes.items())),
            "vocab_formula_bytes": 4 * vocab * (batch * frames + answer),
            "shapes": {"batch": batch, "seq": int(inputs["attention_mask"].shape[1]) - 1 + kept[0],
                       "adapter_frames": frames, "answer_tokens": round(answer / batch), "vocab": vocab}}


def fsdp_groups(model: nn.Module) -> dict[str, int]:
    """Parameters FSDP holds whole during a step: the root group's (all along; and the trained ones' full
    gradients at the end of backward) and the largest block's."""
    from tasks.fsdp import shard_units

    blocks = shard_units(model)
    sizes = [sum(p.numel() for p in b.parameters()) for b in blocks]
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    root = [p for p in model.parameters() if id(p) not in in_blocks]
    return {"root": sum(p.numel() for p in root), "block": max(sizes, default=0),
            "root_trained": sum(p.numel() for p in root if p.requires_grad)}

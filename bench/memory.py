"""Training memory of stage I (S2T, the stage that carries the LLM) per preset: weights, LoRA, gradients,
AdamW state and activations at the configured batch, per worker, under DDP and FSDP, with and without
gradient checkpointing.

    python -m bench.memory [--work DIR] [--skip-smollm2] [--json FILE]   # prints the table (markdown)
    python -m bench.run --stages memory              # the same as a bench stage (bench/results/memory.json)

Measured (bench/memory_measure.py): the tiny presets and smollm2-135m, built as training builds them, one
step on CPU. Computed (bench/memory_paper.py): llama-3b and llama-8b from their real module shapes and
per-token bytes measured on one real-size layer. Each row takes the batch size and workers of the s2t
section of the pipeline config it names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bench.memory_paper import ANSWER_TOKENS, PROMPT_TOKENS, QUESTION_S

GIB = 1 << 30


# ---- per worker, and the table ------------------------------------------------------------------------

MEASURED = (("tiny", {}, "tiny.yaml", 4.0),
            ("tiny", {"lora_rank": 4, "train_encoder": False}, "tiny.yaml", 4.0),
            ("smollm2-135m", {}, "experiment-smollm2.yaml", 4.0))
"""(preset, overrides, the pipeline config whose s2t batch and workers apply, seconds of question audio)."""
COMPUTED = (("llama-3b", "paper-3b.yaml"), ("llama-8b", "paper-8b.yaml"))


def stage_options(config: str) -> dict[str, Any]:
    """The s2t section of a shipped pipeline config (batch_size, workers, ...)."""
    import yaml

    from bench.run import REPO

    return dict(yaml.safe_load((REPO / "configs" / config).read_text())["s2t"])


def per_worker(row: dict[str, Any], workers: int, bf16: bool) -> dict[str, float]:
    """Bytes per worker under DDP and FSDP over `workers`, without and with gradient checkpointing.

    DDP adds its gradient buckets (a second copy of the gradients) and, under bf16 autocast, the bf16
    copies of the trained weights. FSDP divides weights, gradients and AdamW state by the workers and holds
    whole the root group and two blocks (the one running, the one prefetched) in the compute dtype, and the
    root group's full gradients at the end of backward (compute dtype, plus float32 to reduce)."""
    p = row["params"]
    states = p["frozen_bytes"] + p["trained_bytes"] + row["grad_bytes"] + row["optimizer_bytes"]
    compute = 2 if bf16 else 4
    ddp = states + row["grad_bytes"] + (2 * p["trained"] if bf16 else 0)
    fsdp = (states / workers + (p["root"] + 2 * p["block"]) * compute
            + p["root_trained"] * (compute + (4 if bf16 else 0)))
    return {f"{s}{gc}": base + row[f"activations{gc}"]
            for s, base in (("ddp", ddp), ("fsdp", fsdp)) for gc in ("", "_gc")}


def measured_rows(work: Path, skip_smollm2: bool = False) -> list[dict[str, Any]]:
    """The measured presets, each at its pipeline config's s2t batch."""
    from bench.memory_measure import measure, speech_rows
    from models.llm import prepare_base_llm
    from models.presets import resolve_preset

    rows = []
    for name, overrides, config, seconds in MEASURED:
        if skip_smollm2 and name == "smollm2-135m":
            continue
        opts = stage_options(config)
        texts = [t for r in speech_rows(32) for t in (r["question_text"], r["answer_text"])]
        preset = resolve_preset(name, **overrides)
        base = prepare_base_llm(preset, corpus_texts=texts if preset.llm == "random" else None,
                                cache_dir=work / "llm-cache")
        row = measure(name, overrides, base, opts["batch_size"], seconds)
        row.update(preset=name, overrides=overrides, config=config, workers=opts.get("workers", 2),
                   source="measured (CPU, float32)", seconds=seconds)
        row["per_worker"] = per_worker(row, row["workers"], bf16=False)
        rows.append(row)
    return rows


def computed_rows() -> list[dict[str, Any]]:
    """The paper presets, computed at their pipeline config's s2t batch (GPU: bf16 frozen weights)."""
    from bench.memory_paper import paper_estimate

    rows = []
    for name, config in COMPUTED:
        opts = stage_options(config)
        est = paper_estimate(name, opts["batch_size"])
        p = est["params"]
        p["frozen_bytes"], p["trained_bytes"] = 2 * p["frozen"], 4 * p["trained"]  # load_dtype auto on GPU
        row = {**est, "preset": name, "overrides": {}, "config": config, "workers": opts["workers"],
               "source": "computed (GPU, bf16 autocast)", "seconds": QUESTION_S,
               "grad_bytes": 4 * p["trained"], "optimizer_bytes": 8 * p["trained"]}  # AdamW: 2 fp32 moments
        row["per_worker"] = per_worker(row, row["workers"], bf16=True)
        rows.append(row)
    return rows


def _size(n: float) -> str:
    """Bytes as GiB (or MiB below 1 GiB)."""
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / (1 << 20):.1f} MiB"


def _count(n: float) -> str:
    """A parameter count (k, M, B)."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(int(n))


def render(rows: list[dict[str, Any]]) -> list[str]:
    """The memory table (markdown lines)."""
    out = ["| Preset (s2t of) | How | Batch × seq (frames, answer tokens) | Frozen weights | Trained weights "
           "(LoRA) | Gradients | AdamW | Activations (checkpointing) | Per worker, DDP (checkpointing) "
           "| Per worker, FSDP × workers (checkpointing) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p, s, w = r["params"], r["shapes"], r["per_worker"]
        name = r["preset"] + ("".join(f", {k}={v}" for k, v in r["overrides"].items()))
        lora = f" ({_count(p['lora'])})" if p["lora"] else ""
        out.append(
            f"| {name} ({r['config']}) | {r['source']} | {s['batch']} × {s['seq']} ({s['adapter_frames']}, "
            f"{s['answer_tokens']}) | {_count(p['frozen'])}: {_size(p['frozen_bytes'])} | "
            f"{_count(p['trained'])}{lora}: {_size(p['trained_bytes'])} | {_size(r['grad_bytes'])} | "
            f"{_size(r['optimizer_bytes'])} | {_size(r['activations'])} ({_size(r['activations_gc'])}) | "
            f"{_size(w['ddp'])} ({_size(w['ddp_gc'])}) | {_size(w['fsdp'])} ({_size(w['fsdp_gc'])}) × "
            f"{r['workers']} |")
    return out


NOTES = [
    "Per worker = weights + gradients + AdamW state + activations; DDP adds its gradient buckets and (bf16) "
    "autocast's copies of the trained weights; FSDP divides the first three by the workers and adds what it "
    "holds whole during a step (the root group: embeddings, heads, speech adapter, encoder stem, and its "
    "trained weights' full gradients; two transformer blocks). Not counted: allocator slack, the CUDA "
    "context (~0.5-1 GiB), one op's temporary buffers, the frozen encoder's forward (no grad: it keeps "
    "nothing).",
    "Seq = the spliced sequence (prompt + kept adapter frames + answer) per row; frames = adapter frames "
    "(25 Hz) per row; answer tokens per row (with the end-of-turn token).",
    f"Measured rows: CPU float32, one step on seeded rows of {MEASURED[0][3]:g} s of noise audio and the "
    "workload's QA text; activations = bytes autograd saves in the forward (parameters excluded, each "
    "storage once), with gradient checkpointing what the checkpoints keep.",
    f"Computed rows (llama-3b, llama-8b): parameters from the real modules at the public shapes on the "
    f"meta device; frozen weights bf16 (load_dtype auto), trained float32; activations for {QUESTION_S} s "
    f"questions ({QUESTION_S * 25} adapter frames, all kept), {PROMPT_TOKENS} prompt and {ANSWER_TOKENS} "
    "answer tokens: per-token bytes measured on one real-size LLM layer with LoRA and one real-size "
    "adapter under bf16 autocast (linear term; CUDA's fused attention keeps no length² tensors), plus the "
    "float32 log-softmax of the CTC head over every adapter frame and of the LM head over the answer "
    "tokens (4 · vocab · (frames + answer tokens) bytes, which the tiny measurement matches exactly). With "
    "checkpointing: the blocks' inputs plus one block recomputed in backward.",
]


def memory(ctx: Any) -> dict[str, Any]:
    """The bench stage: the table's rows (measured and computed), its markdown and notes."""
    torch.set_num_threads(max(1, ctx.cores))
    skip = bool(ctx.arg("memory", "skip_smollm2", False))
    rows = measured_rows(ctx.dir("memory"), skip_smollm2=skip) + computed_rows()
    return {"cases": [], "rows": rows, "markdown": render(rows), "notes": NOTES}


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.memory`: print the table (and write its rows as JSON with --json)."""
    import argparse
    import json

    from bench.context import BenchContext

    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("bench/work/memory"), help="scratch folder")
    parser.add_argument("--skip-smollm2", action="store_true", help="leave out the smollm2-135m row")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    ctx = BenchContext(work=str(args.work.resolve()), run_id="memory",
                       stage_args={"memory": {"skip_smollm2": args.skip_smollm2}})
    result = memory(ctx)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    print("\n".join([*result["markdown"], "", *[f"- {n}" for n in result["notes"]]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

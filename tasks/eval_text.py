"""The knowledge there is to keep: a base instruct LLM answering the eval set's WRITTEN questions.

`echox evaluate --mode text` scores the LLM a speech model starts from with the same eval set, the same
normaliser and the same whole-word alias match as the spoken evaluation, so its accuracy is the upper
bound of what stage I and echo training can keep. The prompt is the LLM's own chat template (the one the
S2T's prompt is rendered with) with the question as the user turn and an optional one-sentence system turn.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import ConfigError, InputError
from tasks.eval_questions import EvalItem, check_eval_rejects, read_eval_set

if TYPE_CHECKING:
    from models.presets import ModelPreset

TEXT_STAGE = "text-llm"
"""What a text-mode report calls its model's stage."""


def is_hf_llm_dir(path: Path) -> bool:
    """A local HF causal-LM directory: a config.json with a model_type and a tokenizer beside it."""
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return False
    has_tokenizer = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    return isinstance(data, dict) and "model_type" in data and has_tokenizer


def check_text_llm(*, model: str | None, preset: str | None, overrides: dict[str, Any]) -> Path | ModelPreset:
    """What a text-mode evaluation will load, checked without building anything: the `model` directory,
    or the resolved preset; ConfigError/InputError for what has no knowledge to score."""
    if model is not None:
        path = Path(model)
        if not path.is_dir():
            raise InputError(f"--model {model}: no such directory")
        config = path / "config.json"
        stage = json.loads(config.read_text()).get("stage") if config.is_file() else None
        if stage is not None:
            raise ConfigError(f"--model {model} is an echox {stage} checkpoint; --mode text takes a base LLM "
                              "directory (a local HF causal LM) or --preset")
        if not is_hf_llm_dir(path):
            raise InputError(f"--model {model} is not an HF causal-LM directory (config.json with a "
                             "model_type, and a tokenizer)")
        return path
    from models.presets import resolve_preset

    spec = resolve_preset(str(preset), **overrides)
    if spec.llm == "random":
        raise ConfigError(f"preset {spec.name!r} has a random-init LLM (its tokenizer is trained per "
                          "corpus): it holds no knowledge to measure; use a preset with a real LLM "
                          "(smollm2-135m) or --model DIR")
    return spec


def text_llm_dir(*, model: str | None, preset: str | None, overrides: dict[str, Any],
                 cache_dir: Path) -> Path:
    """The LLM directory a text-mode evaluation loads: `model` as given, or the preset's base LLM (built
    and cached exactly as training builds it); the errors of `check_text_llm`."""
    checked = check_text_llm(model=model, preset=preset, overrides=overrides)
    if isinstance(checked, Path):
        return checked
    from models.llm import prepare_base_llm

    return prepare_base_llm(checked, corpus_texts=None, cache_dir=cache_dir)


class TextAnswerer:
    """A causal LM and its tokenizer loaded once; answers written questions greedily, timed."""

    def __init__(self, llm_dir: Path, *, system_prompt: str | None, max_new_tokens: int,
                 device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from models.llm import load_tokenizer

        self.tokenizer = load_tokenizer(llm_dir)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(f"{llm_dir}: the tokenizer has no chat template (an instruct LLM is needed)")
        self.model = AutoModelForCausalLM.from_pretrained(str(llm_dir), dtype=torch.float32).to(device).eval()
        self.system_prompt = system_prompt or None
        self.max_new_tokens, self.device = max_new_tokens, device

    def prompt_ids(self, question: str) -> list[int]:
        """Token ids of the chat prompt for one question, ending with the assistant header."""
        from models.llm import TEMPLATE_KWARGS

        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": question})
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                  **TEMPLATE_KWARGS)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def answer(self, question: str) -> dict[str, Any]:
        """Greedy response text, its token count and latency."""
        import torch

        start = time.perf_counter()
        ids = torch.tensor([self.prompt_ids(question)], device=self.device)
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=self.max_new_tokens,
                                      pad_token_id=self.pad_id)
        new = out[0, ids.shape[1]:].tolist()
        return {"response": self.tokenizer.decode(new, skip_special_tokens=True).strip(),
                "num_tokens": len(new), "latency_s": time.perf_counter() - start}

    @property
    def pad_id(self) -> int:
        """The id generation pads finished answers (and left-padded prompts) with: pad, else end of text."""
        pad = self.tokenizer.pad_token_id
        return self.tokenizer.eos_token_id if pad is None else pad

    def generate_batch(self, questions: list[str]) -> list[list[int]]:
        """Greedy new token ids of several questions generated together (prompts left-padded; the attention
        mask keeps the padding out, so each answer is the one `answer` gives, up to float sums); each list
        ends at its first end-of-text token, as a lone generation stops there."""
        import torch

        prompts = [self.prompt_ids(q) for q in questions]
        pad = self.pad_id
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=mask, do_sample=False,
                                      max_new_tokens=self.max_new_tokens, pad_token_id=pad)
        ends = self.model.generation_config.eos_token_id  # what stops a lone generation: an id or a list
        stops = {pad, self.tokenizer.eos_token_id, *(ends if isinstance(ends, list) else [ends])}
        new = []
        for row in out[:, width:].tolist():
            end = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
            new.append(row[:end])
        return new

    def answer_batch(self, questions: list[str]) -> list[str]:
        """Greedy response texts of several questions generated together (`generate_batch`)."""
        return [self.tokenizer.decode(ids, skip_special_tokens=True).strip()
                for ids in self.generate_batch(questions)]

    def answer_many(self, questions: list[str]) -> list[dict[str, Any]]:
        """`answer`'s dicts for several questions generated together; each latency is the batch's time over
        its size."""
        start = time.perf_counter()
        new = self.generate_batch(questions)
        each = (time.perf_counter() - start) / len(questions)
        return [{"response": self.tokenizer.decode(ids, skip_special_tokens=True).strip(),
                 "num_tokens": len(ids), "latency_s": each} for ids in new]


def text_item(item: EvalItem, answered: dict[str, Any], matched: str | None) -> dict[str, Any]:
    """The report's row of one written question (no voice, no audio, no units)."""
    row = {k: v for k, v in asdict(item).items() if k in ("id", "line", "question", "category", "reference")}
    from tasks.eval_speech import SPEECH_FIELDS

    speech = dict.fromkeys(("voice", "question_seconds", "heard", "heard_wer", "first_token_s",
                            "first_units_s", "num_units", "num_segments", "unit_accuracy",
                            "unit_edit_distance", "reference_units",
                            *SPEECH_FIELDS))
    return {**row, **speech, "spoken_question": item.question, "gold": list(item.gold), **answered,
            "correct": matched is not None, "matched": matched}


def answer_written(eval_set: Path, llm_dir: Path, *, system_prompt: str | None, max_new_tokens: int,
                   limit: int | None, device: str, max_reject_fraction: float, batch_size: int = 1,
                   progress: Callable[[int, int], None] | None = None) -> tuple[list[dict], list[dict]]:
    """(items, rejects) of the eval set's written questions answered by the LLM in `llm_dir`, one at a time
    or `batch_size` together."""
    from tasks.text_norm import match_answer

    items, rejects = read_eval_set(Path(eval_set))
    if limit is not None and len(items) > limit:
        items = items[:limit]
        rejects = [r for r in rejects if r.line < items[-1].line]
    if not items:
        raise InputError(f"{eval_set}: no question can be evaluated ({len(rejects)} rejected)")
    check_eval_rejects(Path(eval_set), len(items), rejects, max_reject_fraction)
    answerer = TextAnswerer(llm_dir, system_prompt=system_prompt, max_new_tokens=max_new_tokens,
                            device=device)
    rows: list[dict] = []
    for first in range(0, len(items), batch_size):
        batch = items[first: first + batch_size]
        answers = ([answerer.answer(batch[0].question)] if batch_size == 1
                   else answerer.answer_many([item.question for item in batch]))
        rows += [text_item(item, a, match_answer(a["response"], item.gold)) for item, a in zip(batch, answers,
                                                                                              strict=True)]
        if progress is not None:
            progress(len(rows), len(items))
    return rows, [r.to_dict() for r in rejects]

"""One function per stage measurement: `stage(ctx) -> {"cases": [...], "notes": [...]}`.

Each runs in its own process (started by bench.run), so its peak memory is its own. Untimed set-up
(model loads, cached inputs) happens before `repeat(...)`, which times only the stage's work. To add
a stage, write a function here and list it in STAGES; bench.report renders any stage's cases.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.context import BenchContext, case, skipped
from bench.measure import repeat, stats, timed
from bench.workload import qa_pairs

SAMPLE_RATE = 16_000
StageFn = Callable[[BenchContext], dict[str, Any]]


def _threads(n: int) -> None:
    """Pin torch's intra-op threads for this stage process."""
    import torch

    torch.set_num_threads(n)


def text_norm(ctx: BenchContext) -> dict[str, Any]:
    """Spoken-form normalisation of every question and answer."""
    from tasks.text_norm import spoken_form

    records = qa_pairs(ctx.pick(1000, 50), ctx.seed)
    texts = [r[k] for r in records for k in ("question", "answer")]
    spoken_form(texts[0])  # warm-up
    m = repeat(lambda: [spoken_form(t) for t in texts], ctx.repeats)
    work = {"records": len(records), "texts": len(texts), "chars": sum(map(len, texts))}
    return {"cases": [case("spoken_form", {"records": len(records)}, m, work=work)]}


def tts(ctx: BenchContext) -> dict[str, Any]:
    """Real-time factor of each TTS engine (Piper at default and one thread, espeak-ng)."""
    from tasks.backends.tts_espeak import EspeakTTS
    from tasks.backends.tts_piper import PiperTTS
    from tasks.text_norm import spoken_form

    records = qa_pairs(ctx.pick(10, 3), ctx.seed)
    texts = [spoken_form(r[k]) for r in records for k in ("question", "answer")]
    engines: list[tuple[str, Callable[[], Any], dict]] = [
        ("piper", PiperTTS, {"threads": "onnxruntime default (all cores)"}),
        ("piper-1-thread", lambda: PiperTTS(threads=1), {"threads": 1}),
        ("espeak", EspeakTTS, {"threads": "1 process per utterance"}),
    ]
    cases = []
    for name, make, params in engines:
        load_s, _, _, backend = timed(make)
        voice = backend.voices()[0]
        backend.synthesize(texts[0], voice)  # warm-up (first ONNX run allocates)
        m = repeat(lambda b=backend, v=voice: sum(len(b.synthesize(t, v)) for t in texts) / SAMPLE_RATE,
                   ctx.repeats)
        audio_s = m["result"]
        cases.append(case(name, {**params, "utterances": len(texts)}, m,
                          work={"audio_s": audio_s, "utterances": len(texts)},
                          rtf=round(m["wall_s"]["median"] / audio_s, 4), load_s=round(load_s, 3)))
    return {"cases": cases, "notes": ["rtf = wall seconds per second of speech (lower is faster)."]}


def asr(ctx: BenchContext) -> dict[str, Any]:
    """Real-time factor and word error rate of the recogniser on Piper and espeak-ng speech."""
    from tasks.asr import make_asr, word_error_rate
    from tasks.backends.tts_espeak import EspeakTTS
    from tasks.backends.tts_piper import PiperTTS
    from tasks.text_norm import spoken_form

    records = qa_pairs(ctx.pick(10, 2), ctx.seed)
    texts = [spoken_form(r[k]) for r in records for k in ("question", "answer")]
    load_s, _, _, recogniser = timed(make_asr)
    cases = []
    for tts_name, make in (("piper", lambda: PiperTTS(threads=1)), ("espeak", EspeakTTS)):
        engine = make()  # untimed set-up: the clips
        clips = [engine.synthesize(t, engine.voices()[0]) for t in texts]
        audio_s = sum(map(len, clips)) / SAMPLE_RATE
        recogniser.transcribe(clips[0])  # warm-up
        m = repeat(lambda c=clips: [recogniser.transcribe(x) for x in c], ctx.repeats)
        wer = statistics.fmean(word_error_rate(t, h) for t, h in zip(texts, m["result"], strict=True))
        m["result"] = None  # the transcripts stay out of the results file
        cases.append(case(f"pocketsphinx-{tts_name}", {"speech": tts_name, "utterances": len(clips)}, m,
                          work={"audio_s": audio_s, "utterances": len(clips)},
                          rtf=round(m["wall_s"]["median"] / audio_s, 4), wer=round(wer, 4),
                          load_s=round(load_s, 3)))
    return {"cases": cases, "notes": ["rtf = wall seconds per second of speech (lower is faster); wer = "
                                      "mean word error rate against the spoken text (voice: the first)."]}


W2V_QUICK = {"encoder_config": {
    "model_dim": 64, "num_encoder_layers": 2, "num_encoder_attn_heads": 4, "ffn_inner_dim": 128,
    "feature_dim": 32, "feature_extractor_layer_descs": [[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2,
    "pos_conv_kernel_size": 16, "num_pos_conv_groups": 4}}


def _random_wav2vec2_checkpoint(ctx: BenchContext, overrides: dict) -> Path:
    """A random-init fairseq2 wav2vec2 checkpoint saved once under the work directory."""
    import torch

    from tasks.features import build_wav2vec2, wav2vec2_config

    path = ctx.path("inputs", "models", f"wav2vec2-base-random{'-quick' if overrides else ''}.pt")
    if not path.exists():
        torch.manual_seed(ctx.seed)
        model = build_wav2vec2(wav2vec2_config("base", overrides))
        torch.save({"model": model.state_dict()}, path)
    return path


def features(ctx: BenchContext) -> dict[str, Any]:
    """Frame features per backend: MFCC+deltas and the fairseq2 wav2vec2-base architecture (random init)."""
    from tasks.backends.features_mfcc import MFCCFeatures
    from tasks.backends.features_wav2vec2 import Wav2Vec2Features

    _threads(ctx.cores)
    clips = ctx.ws.espeak_audio(ctx.pick(10, 3))
    audio_s = sum(map(len, clips)) / SAMPLE_RATE
    overrides = ctx.pick({}, W2V_QUICK)
    ckpt = _random_wav2vec2_checkpoint(ctx, overrides)
    layer = ctx.pick(11, 2)
    backends: list[tuple[str, Callable[[], Any], dict]] = [
        ("mfcc", MFCCFeatures, {"n_mfcc": 13, "deltas": True}),
        ("wav2vec2-base", lambda: Wav2Vec2Features(ckpt, layer=layer, arch="base", arch_overrides=overrides),
         {"arch": "base" + (" (quick: shrunk)" if overrides else ""), "layer": layer, "weights": "random"}),
    ]
    cases = []
    for name, make, params in backends:
        load_s, _, _, backend = timed(make)
        backend.extract(clips[0])  # warm-up
        m = repeat(lambda b=backend: sum(len(b.extract(c)) for c in clips), ctx.repeats)
        cases.append(case(name, {**params, "utterances": len(clips), "torch_threads": ctx.cores}, m,
                          work={"audio_s": audio_s, "frames": m["result"]},
                          rtf=round(m["wall_s"]["median"] / audio_s, 4), load_s=round(load_s, 3)))
    return {"cases": cases}


def kmeans(ctx: BenchContext) -> dict[str, Any]:
    """k-means fit (k-means++ then Lloyd, the build's settings) and labelling, at K=1000 and K=100."""
    from tasks.units import dedup, fit_kmeans, label_frames

    _threads(ctx.cores)
    frames = ctx.ws.mfcc_frames(ctx.pick(300, 16))
    iters, max_frames = 20, 100_000
    cases = []
    for k, fit_repeats in ctx.pick(((1000, ctx.repeats), (100, 1)), ((32, ctx.repeats),)):
        fit = repeat(lambda k=k: fit_kmeans(frames, k, seed=ctx.seed, iters=iters, max_frames=max_frames),
                     fit_repeats)
        centroids = fit["result"]
        fitted = min(len(frames), max_frames)
        cases.append(case(f"fit K={k}", {"k": k, "frames": fitted, "dim": frames.shape[1], "iters": iters},
                          fit, work={"frames": fitted}))
        lab = repeat(lambda c=centroids: dedup(label_frames(frames, c)), ctx.repeats)
        cases.append(case(f"label K={k}", {"k": k, "frames": len(frames)}, lab,
                          work={"frames": len(frames), "audio_s": len(frames) / 100.0}))
    return {"cases": cases, "notes": ["MFCC frames at 100 Hz from espeak-ng speech of the workload. K=100 "
                                      "(the build's default) is fitted once, to label with; the paper's "
                                      "K=1000 is repeated."]}


def shards(ctx: BenchContext) -> dict[str, Any]:
    """Arrow shard write (atomic, with sha256) and read (memory-mapped, sha256 checked)."""
    import pyarrow as pa

    from tasks.shards import read_arrow, write_arrow

    clips = ctx.ws.espeak_audio(ctx.pick(300, 16))
    n = len(clips) // 2
    units = [np.arange(50, dtype=np.int32) % 7] * n
    table = pa.table({"id": [f"r{i}" for i in range(n)],
                      "question_audio": pa.array(clips[0::2], pa.list_(pa.int16())),
                      "answer_audio": pa.array(clips[1::2], pa.list_(pa.int16())),
                      "answer_units": pa.array(units, pa.list_(pa.int32()))})
    path = ctx.path("shards", "bench.arrow")
    mb = table.nbytes / (1 << 20)
    write = repeat(lambda: write_arrow(path, table), ctx.repeats)
    sha = write["result"]["sha256"]
    read = repeat(lambda: read_arrow(path, sha256=sha).num_rows, ctx.repeats)
    audio_s = sum(map(len, clips)) / SAMPLE_RATE
    work = {"records": n, "MiB": round(mb, 2), "audio_s": audio_s}
    return {"cases": [case("write_arrow", {"records": n}, write, work=work),
                      case("read_arrow (sha256 checked)", {"records": n}, read, work=work)]}


def export(ctx: BenchContext) -> dict[str, Any]:
    """`echox export` per target: rows/s, corpus MB/s, and the output's size beside the corpus's."""
    from tasks.export import export_corpus, exporter_names
    from tasks.shards import load_manifest

    corpus = ctx.ws.train_corpus(ctx.arg("export", "records", ctx.pick(300, 16)), ctx.pick(100, 16))
    manifest = load_manifest(corpus) or {}
    rows = int(manifest["totals"]["rows"])
    corpus_mb = sum((corpus / s["path"]).stat().st_size for s in manifest["shards"]) / 1e6
    cases = []
    for target in exporter_names():
        export_corpus(corpus, target, ctx.path("export", target, "warm-up"), overwrite=True)  # imports
        walls, cpus, peak, record = [], [], 0.0, {}
        for rep in range(ctx.repeats):
            out = ctx.path("export", target, f"run-{rep}")
            shutil.rmtree(out, ignore_errors=True)
            wall, cpu, rss, result = timed(lambda out=out, t=target: export_corpus(corpus, t, out))
            walls, cpus, peak, record = [*walls, wall], [*cpus, cpu], max(peak, rss), result.record
        measured = {"wall_s": stats(walls), "cpu_s": stats(cpus), "peak_rss_mb": round(peak, 1)}
        out_mb = record["bytes"] / 1e6
        cases.append(case(target, {"rows": rows, "corpus_MB": round(corpus_mb, 2)}, measured,
                          work={"rows": rows, "MB": corpus_mb}, out_MB=round(out_mb, 2),
                          size_vs_corpus=round(out_mb / corpus_mb, 3),
                          files=sum(1 for p in out.rglob("*") if p.is_file())))
    return {"cases": cases, "notes": [
        "Corpus: the espeak workload corpus (K=100 MFCC units, shards of 32 rows). Each export verifies the "
        "corpus's sha256s, streams it shard by shard, writes a temp folder and renames it into place; "
        "MB/s counts the corpus's Arrow shard bytes (10^6 bytes) read per second; size_vs_corpus = the "
        "export folder's bytes / the shards' bytes. A warm-up export per target (library imports, page "
        "cache) is not timed.",
        "hf-audio and webdataset write one file per corpus shard; lhotse writes a WAV per utterance plus "
        "three gzipped JSONL manifests.",
        "Peak RSS is the stage process's, which built the corpus first (torch loaded): an upper bound of "
        "the export's own memory."]}


def _tokens_per_s(metrics_path: Path, skip_steps: int) -> list[float]:
    """tokens/s of every metrics window that starts after `skip_steps` (warm-up excluded)."""
    rows = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
    return [r["tokens_per_s"] for r in rows if r["step"] > skip_steps]


def train(ctx: BenchContext) -> dict[str, Any]:
    """S2T and T2C training tokens/s (tiny preset) with 1 and 2 DDP workers under Ray Train."""
    from tasks.train import TrainConfig, run_ray
    from tasks.train_stage import prepare_stage

    corpus = ctx.ws.train_corpus(ctx.pick(64, 16), ctx.pick(100, 16))
    steps = ctx.arg("train", "steps", ctx.pick(30, 6))
    log_every = ctx.arg("train", "log_every", ctx.pick(5, 2))
    cases = []
    for stage in ("s2t", "t2c"):
        build = prepare_stage(stage, "tiny", {}, corpus, ctx.dir("llm-cache"), seed=ctx.seed)
        for workers in ctx.arg("train", "workers", (1, 2)):
            out = ctx.path("train", f"{stage}-w{workers}")
            shutil.rmtree(out, ignore_errors=True)
            cfg = TrainConfig(stage=stage, corpus_dir=str(corpus), out_dir=str(out), max_steps=steps,
                              batch_size=8, log_every=log_every, warmup_steps=min(5, steps), ckpt_every=steps,
                              workers=workers, seed=ctx.seed)
            wall, cpu, rss, _ = timed(lambda cfg=cfg, b=build: run_ray(cfg, b, name=f"bench-{cfg.stage}"))
            windows = _tokens_per_s(out / "metrics.jsonl", log_every)
            measured = {"wall_s": stats([wall]), "cpu_s": stats([cpu]), "peak_rss_mb": round(rss, 1)}
            cases.append(case(f"{stage} {workers} worker{'s' * (workers > 1)}",
                              {"stage": stage, "workers": workers, "steps": steps, "batch_per_worker": 8,
                               "preset": "tiny"}, measured, rates={"tokens_per_s": stats(windows)["median"]},
                              tokens_per_s_windows=stats(windows),
                              threads_per_worker=max(1, ctx.cores // workers)))
    return {"cases": cases, "notes": [
        f"tokens/s: target tokens of all ranks per second, median over metrics windows of {log_every} steps "
        f"after the first window (warm-up); wall time includes Ray and Ray Train start-up.",
        "Batch size is per worker, so 2 workers process twice the examples per step (DDP weak scaling)."]}


def echo_labels(ctx: BenchContext) -> dict[str, Any]:
    """Echo pseudo-label generation (EchoLabeler.label, the core of label_shard): units/s and rows/s."""
    if importlib.util.find_spec("tasks.echo_labels") is None:
        return skipped("TODO: tasks/echo_labels.py does not exist yet; add the measurement once it does.")
    from tasks.echo_labels import ROW_COLUMNS, EchoLabeler
    from tasks.shards import read_arrow

    s2t_dir, t2c_dir = _trained_models(ctx)
    corpus = ctx.ws.train_corpus(ctx.pick(64, 16), ctx.pick(100, 16))
    table = read_arrow(corpus / "shard-00000.arrow")
    rows = table.select([c for c in ROW_COLUMNS if c in table.column_names]).to_pylist()
    rows = rows[: ctx.arg("echo_labels", "rows", ctx.pick(8, 4))]
    max_units, batch = ctx.arg("echo_labels", "max_units", 200), 8
    labeler = EchoLabeler(str(s2t_dir), str(t2c_dir), threads=ctx.cores, batch_size=batch,
                          max_units=max_units)
    labeler.label(rows[:1])  # warm-up
    m = repeat(lambda: labeler.label(rows).stats, ctx.repeats)
    st, wall = m["result"], m["wall_s"]["median"]
    m["result"] = None
    params = {"rows": len(rows), "batch_size": batch, "max_units": max_units, "preset": "tiny",
              "torch_threads": ctx.cores}
    return {"cases": [case("label rows", params, m, work={"rows": len(rows), "units": st.units_generated},
                           segments=st.segments, t2c_generation_share=round(st.gen_seconds / wall, 3),
                           rejected=st.rejected)],
            "notes": ["units/s counts every unit the T2C generated (rejected rows' too); the T2C generates "
                      "all segments of a batch together, so units/s grows with segments per batch. Tiny "
                      "preset trained for a few steps: an untrained T2C runs to the max_units guard (such "
                      "rows are rejected), so the figure measures the machinery, not a real model.",
                      "Shard read/write around it (label_shard) is measured by the shards stage."]}


def _trained_models(ctx: BenchContext) -> tuple[Path, Path]:
    """Stage-I and stage-II model directories: the train stage's, or short local runs (untimed)."""
    from tasks.train import TrainConfig, run_local
    from tasks.train_stage import prepare_stage

    corpus = ctx.ws.train_corpus(ctx.pick(64, 16), ctx.pick(100, 16))
    dirs = []
    for stage in ("s2t", "t2c"):
        out = Path(ctx.work) / "train" / f"{stage}-w1"
        if not (out / "model" / "config.json").exists():
            build = prepare_stage(stage, "tiny", {}, corpus, ctx.dir("llm-cache"), seed=ctx.seed)
            shutil.rmtree(out, ignore_errors=True)
            run_local(TrainConfig(stage=stage, corpus_dir=str(corpus), out_dir=str(out), max_steps=4,
                                  batch_size=8, log_every=2, warmup_steps=1, ckpt_every=4, seed=ctx.seed),
                      build)
        dirs.append(out / "model")
    return dirs[0], dirs[1]


def streaming(ctx: BenchContext) -> dict[str, Any]:
    """Streaming inference: time to the first spoken segment (EchoModel.stream_speech)."""
    try:
        from models.echo import build_echo
        from tasks.data import load_corpus
        from tasks.inference import load_checkpoint_model
    except ImportError as e:
        return skipped(f"TODO: streaming API not importable yet ({e})")
    _threads(ctx.cores)
    s2t_dir, t2c_dir = _trained_models(ctx)
    model = build_echo(load_checkpoint_model(s2t_dir, "s2t"), load_checkpoint_model(t2c_dir, "t2c")).eval()
    rows = load_corpus(ctx.ws.train_corpus(ctx.pick(64, 16), ctx.pick(100, 16)), verify=False)
    clips = [rows[i]["question_audio"] for i in range(ctx.pick(5, 2))]
    max_new, max_units = 64, 200
    first, total, first_tokens, segments = [], [], [], []
    next(iter(model.stream_speech(clips[0], max_new_tokens=4, max_units=8)), None)  # warm-up
    for clip in clips:
        t0 = time.perf_counter()
        stream = model.stream_speech(clip, max_new_tokens=max_new, max_units=max_units)
        seg = next(stream, None)
        first.append(time.perf_counter() - t0)
        rest = list(stream)
        total.append(time.perf_counter() - t0)
        first_tokens.append(0 if seg is None else seg.end - seg.start)
        segments.append(len(rest) + (seg is not None))
    measured = {"wall_s": stats(first), "cpu_s": None, "peak_rss_mb": None}
    return {"cases": [case("time to first segment", {"questions": len(clips), "max_new_tokens": max_new,
                                                     "max_units": max_units, "preset": "tiny"}, measured,
                           full_answer_s=stats(total), first_segment_tokens=stats(first_tokens),
                           segments=stats(segments))],
            "notes": ["Tiny preset trained for a few steps: the cost of the streaming machinery, not of a "
                      "real model; wall_s is the time to the first segment."]}


def vocoder(ctx: BenchContext) -> dict[str, Any]:
    """Real-time factor of speech out: units → durations → log-mel → Griffin-Lim (tiny vocoder, K=100)."""
    import torch

    from models.presets import resolve_preset
    from models.vocoder import build_vocoder, vocoder_config

    _threads(ctx.cores)
    preset = resolve_preset("tiny")
    model = build_vocoder(preset, vocoder_config(preset, {"num_units": 100}), seed=ctx.seed).eval()
    rng = np.random.default_rng(ctx.seed)
    seqs = [torch.from_numpy(rng.integers(0, 100, ctx.pick(150, 30))) for _ in range(ctx.pick(5, 2))]

    def run() -> float:
        samples = 0
        with torch.inference_mode():
            for units in seqs:
                _, mel = model.predict(units)
                samples += len(model.generate(mel))
        return samples / SAMPLE_RATE

    run()  # warm-up (caches the mel inverse and Griffin-Lim windows)
    m = repeat(run, ctx.repeats)
    audio_s = m["result"]
    rtf = {k: round(v / audio_s, 4) for k, v in m["wall_s"].items() if isinstance(v, float)}
    return {"cases": [case("vocode (tiny, Griffin-Lim 32 it.)",
                           {"sequences": len(seqs), "units": int(sum(len(u) for u in seqs))}, m,
                           work={"audio_s": audio_s}, rtf=rtf)],
            "notes": ["Random-init tiny vocoder: predicted durations of an untrained model, so the audio "
                      "length differs from a trained one; the cost per second of audio (rtf = wall / audio "
                      "seconds) is what it measures. Griffin-Lim dominates."]}


def speech_roundtrip(ctx: BenchContext) -> dict[str, Any]:
    """Speech out, measured on a finished pipeline run with a vocoder step (its folder as the stage arg
    `run`): the ASR round trip on the vocoder's held-out rows, the time to first audio of `speak`, and
    the evaluation's speech-to-speech accuracy beside its ASR ceiling."""
    run = ctx.arg("speech_roundtrip", "run", None)
    if not run or not (Path(run) / "vocoder" / "model").is_dir():
        example = json.dumps({"speech_roundtrip": {"run": "outputs/demo"}})
        return {"skipped": "needs a finished pipeline run with a vocoder step: python -m bench.run --stages "
                           f"speech_roundtrip --stage-args '{example}'"}
    import torch

    from tasks.inference import load_checkpoint_model
    from tasks.speak import SpeechOut, speak
    from tasks.vocode import load_vocoder
    from tasks.vocoder_eval import intelligibility

    root = Path(run)
    torch.set_num_threads(1)
    m = repeat(lambda: intelligibility(root / "vocoder" / "model", root / "corpus"), 1)
    summary = m["result"]["summary"]
    wer = {k: round(summary[k], 3) for k in ("wer_original", "wer_resynthesized", "wer_vocoded",
                                            "wer_vocoded_gold_durations", "ratio", "rtf")
           if summary.get(k) is not None}
    cases = [case("ASR round trip on the vocoder's held-out rows",
                  {"rows": summary["rows"], "utterances": summary["utterances"]}, m, **wer)]
    cases += _first_audio_cases(ctx, root, load_checkpoint_model, load_vocoder, SpeechOut, speak)
    notes = ["wer_original: pocketsphinx on the corpus's own TTS audio; wer_resynthesized: on that audio's "
             "log-mel through Griffin-Lim (the generator's ceiling); wer_vocoded: on the gold units "
             "vocoded with predicted durations (gold_durations: with the corpus's durations); ratio = "
             "wer_vocoded / wer_original (goal ≤ 1.5). Rows held out from the vocoder's training."]
    report = root / "eval" / "report.json"
    if report.is_file():
        s = json.loads(report.read_text())["summary"]
        if s.get("s2s_items"):
            notes.append(f"evaluation of this run ({s['items']} held-out questions): text accuracy "
                         f"{s['accuracy']:.3f}, speech-to-speech accuracy {s['s2s_accuracy']:.3f} "
                         f"({s['s2s_correct']}/{s['s2s_items']}), ASR ceiling "
                         f"{s['asr_ceiling_accuracy']:.3f} "
                         f"({s['asr_ceiling_correct']}/{s['asr_ceiling_items']})")
    return {"cases": cases, "notes": notes}


def _first_audio_cases(ctx: BenchContext, root: Path, load_model: Any, load_vocoder: Any, speech_out: Any,
                       speak: Any) -> list[dict[str, Any]]:
    """`speak` on held-out questions of the run's evaluation: time to the first vocoded audio."""
    import soundfile

    questions = root / "eval" / "report.questions.json"
    if not questions.is_file():
        return []
    items = json.loads(questions.read_text())["items"][: ctx.pick(5, 2)]
    model, vocoder = load_model(root / "echo" / "model", "echo"), load_vocoder(root / "vocoder" / "model")
    firsts: list[float] = []

    def run() -> int:
        segments = 0
        for item in items:
            audio, _ = soundfile.read(item["audio"], dtype="int16")
            out = speech_out(vocoder)
            result = speak(model, audio, max_new_tokens=64, max_units=1000,
                           on_segment=lambda seg, t, out=out: out(seg))
            segments += len(result.segments)
            if out.first_audio_s is not None:
                firsts.append(out.first_audio_s)
        return segments

    m = repeat(run, 1)
    first = sorted(firsts)[len(firsts) // 2] if firsts else None
    return [case("speak --vocoder: time to first audio", {"questions": len(items)}, m,
                 first_audio_s_median=round(first, 3) if first is not None else None,
                 first_audio_s_max=round(max(firsts), 3) if firsts else None)]


# ---------------------------------------------------------------- corpus-level runs (one process each)
def _corpus_cases(ctx: BenchContext) -> list[dict[str, Any]]:
    """Prefect+Ray build cases: default settings at every size, 1 vs 2 pinned workers at scaling_size."""
    wanted = [(n, 2, None, "default") for n in ctx.sizes]
    wanted += [(ctx.scaling_size, 1, 1, "scaling"), (ctx.scaling_size, 2, 1, "scaling"),
               (ctx.scaling_size, 1, None, "default 1 worker")]
    cases: dict[tuple[int, int, int], dict[str, Any]] = {}
    for n, workers, tpw, role in wanted:
        resolved = tpw or max(1, ctx.cores // workers)  # what BuildCorpusConfig resolves it to
        key = (n, workers, resolved)
        entry = cases.setdefault(key, {"records": n, "workers": workers, "threads_per_worker": resolved,
                                       "threads_setting": tpw, "roles": []})
        entry["roles"].append(role)
    return list(cases.values())


def _run_corpus_cases(ctx: BenchContext, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run every spec (each with its "kind") build_repeats times, interleaved round by round, each in a
    fresh measured process, so drifting machine load touches every case alike."""
    from bench.cases import run_case_process

    runs: list[list[dict[str, Any]]] = [[] for _ in specs]
    for rep in range(ctx.build_repeats):
        for i, spec in enumerate(specs):
            runs[i].append(run_case_process(ctx, {**spec, "tts": ctx.tts}, rep))
    return [_aggregate(spec["kind"], spec, results) for spec, results in zip(specs, runs, strict=True)]


def _aggregate(kind: str, spec: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    """One case from repeated runs: medians of wall, CPU and peak RSS of each run's process tree."""
    errors = [r["error"] for r in results if r.get("error")]
    if errors:
        raise RuntimeError(f"{kind} {spec}: {errors[0]}")
    measured = {"wall_s": stats([r["wall_s"] for r in results]),
                "cpu_s": stats([r["process"]["tree_cpu_s"] for r in results]),
                "peak_rss_mb": max(r["process"]["tree_peak_rss_mb"] for r in results)}
    last = results[-1]
    name = (f"baseline n={spec['records']}" if kind == "baseline" else
            f"flow n={spec['records']} w={spec['workers']} t={spec['threads_per_worker']}")
    return case(name, {k: v for k, v in spec.items() if k != "kind"}, measured,
                work={"audio_s": last["audio_seconds"], "records": last["rows"]},
                process_wall_s=stats([r["process"]["wall_s"] for r in results]),
                phases_s=_median_phases(results), shards=last.get("shards"),
                shard_size=last.get("shard_size"))


def _median_phases(results: list[dict[str, Any]]) -> dict[str, float] | None:
    """Each phase's median over the runs (phases every run reported)."""
    runs = [r.get("phases_s") or {} for r in results]
    keys = [k for k in runs[0] if all(k in r for r in runs)] if runs else []
    return {k: statistics.median(r[k] for r in runs) for k in keys} or None


def baseline(ctx: BenchContext) -> dict[str, Any]:
    """The plain single-process loop (bench.baseline) at the scaling size (every size on request)."""
    sizes = {*ctx.sizes, ctx.scaling_size} if ctx.arg("baseline", "all_sizes", False) else {ctx.scaling_size}
    specs = [{"records": n, "kind": "baseline"} for n in sorted(sizes)]
    return {"cases": _run_corpus_cases(ctx, specs), "notes": [
        f"TTS: {ctx.tts}. wall_s is timed inside the process after its imports; process_wall_s adds "
        "interpreter start-up and imports."]}


def corpus_build(ctx: BenchContext) -> dict[str, Any]:
    """The Prefect+Ray corpus build (flows.build_corpus) at default settings and with pinned workers.

    The plain loop at the scaling size runs in the same rounds (first in each), so the overhead ratios
    compare runs made under the same machine load; it is returned as "baseline_cases".
    """
    base = {"records": ctx.scaling_size, "kind": "baseline"}
    cases = _run_corpus_cases(ctx, [base, *({**c, "kind": "flow"} for c in _corpus_cases(ctx))])
    return {"cases": cases[1:], "baseline_cases": cases[:1], "notes": [
        f"TTS: {ctx.tts}. wall_s times build_corpus() in a fresh process with a Prefect server already "
        "running; it includes starting Ray and its workers (which import torch and load the models).",
        f"On this {os.cpu_count()}-core machine the default threads_per_worker is cores // workers, so "
        "the default 2-worker run is also the pinned 2-worker scaling run.",
        "Each round runs the plain loop, then every build case, each in a fresh process; medians over "
        "rounds."]}


def memory(ctx: BenchContext) -> dict[str, Any]:
    """Training memory per preset (bench/memory.py): a table, measured on tiny models, computed for 3B/8B."""
    from bench.memory import memory as table

    return table(ctx)


def echo_targets(ctx: BenchContext) -> dict[str, Any]:
    """Online vs offline echo targets (bench/echo_targets.py) from a finished pipeline run."""
    from bench.echo_targets import compare

    run = ctx.arg("echo_targets", "run", None)
    if not run:
        return skipped('needs a finished pipeline run with offline echo labels and an evaluation: '
                       '--stage-args \'{"echo_targets": {"run": "outputs/demo"}}\'')
    return compare(Path(run), steps=ctx.arg("echo_targets", "steps", ctx.pick(None, 2)),
                   work=Path(ctx.dir("echo_targets")), threads=ctx.cores)


STAGES: dict[str, StageFn] = {
    "text_norm": text_norm, "tts": tts, "asr": asr, "features": features, "kmeans": kmeans, "shards": shards,
    "export": export,
    "baseline": baseline, "corpus_build": corpus_build, "train": train, "echo_labels": echo_labels,
    "streaming": streaming, "vocoder": vocoder,
    "speech_roundtrip": speech_roundtrip, "memory": memory, "echo_targets": echo_targets,
}
NEEDS_PREFECT = {"corpus_build"}
# corpus_build runs the plain loop in its own rounds; the baseline stage alone adds the other sizes.
DEFAULT_STAGES = [name for name in STAGES if name != "baseline"]

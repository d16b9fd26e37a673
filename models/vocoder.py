"""Unit vocoder: deduplicated units → durations → 80-band log-mel → waveform (Griffin-Lim on CPU).

units (B, U) → embedding + conv/Transformer encoder (B, U, D) → duration predictor (log-frames per unit,
MSE) → length regulator (gold durations in training, predicted ones rounded to ≥ 1 at inference; each unit
frame becomes `upsample` mel frames) → conv decoder over mel frames (B, F, C) → log-mel (B, F, 80), L1 loss
against the log-mel of the row's own audio → `generator` (Griffin-Lim today) → 16 kHz waveform.

Mel frames align with unit frames: the corpus's features (MFCC's 25 ms window, wav2vec2's 400-sample
receptive field) give frame t at samples [t·s, t·s + 400), centred at t·s + 200 for stride s; mel frame j
(centred STFT, hop h) is centred at j·h. So unit frame t is mel frames t·u + k + round(200 / h), k < u,
with u = s / h a whole number (100 fps features and hop 160: u = 1; 50 fps: u = 2); other frame rates are
refused. A waveform of F mel frames is exactly F · hop samples long.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.errors import ConfigError, InputError
from models.build_info import BuildInfo
from models.presets import ModelPreset

SAMPLE_RATE = 16_000
FEATURE_CENTRE = 200
"""Samples from a corpus feature frame's start to its centre (a 400-sample window)."""
GENERATORS = ("griffin-lim",)
"""Waveform generators built in. A HiFi-GAN-class generator (mel → waveform, adversarially trained) is the
planned GPU choice: it would be named here, trained on the same log-mels, and selected by a preset."""


@dataclass(frozen=True)
class VocoderConfig:
    """Sizes and signal settings of one vocoder (recorded in its checkpoint)."""

    num_units: int
    """K: the corpus codebook's unit count."""
    frame_rate: float = 100.0
    """Unit (feature) frames per second of the corpus."""
    codebook: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Identity of the corpus codebook (sha256, num_units, features) the units come from."""
    dim: int = 128
    """Encoder width D."""
    encoder_layers: int = 2
    """Transformer layers over units (after two conv layers)."""
    heads: int = 2
    """Attention heads of the encoder."""
    decoder_dim: int = 128
    """Decoder (frame-level) channels C."""
    decoder_layers: int = 3
    """Residual conv layers of the decoder."""
    kernel: int = 5
    """Conv kernel size (encoder, duration predictor, decoder)."""
    dropout: float = 0.1
    """Dropout in the encoder and decoder."""
    sample_rate: int = SAMPLE_RATE
    """Output sample rate."""
    n_fft: int = 1024
    """STFT size of the log-mel."""
    win_length: int = 1024
    """STFT window of the log-mel."""
    hop_length: int = 160
    """STFT hop of the log-mel (160 = 100 mel frames per second at 16 kHz)."""
    n_mels: int = 80
    """Mel bands."""
    max_train_units: int = 64
    """Training crops each utterance to a random window of at most this many units (0: whole utterances);
    the decoder is local and the encoder needs little context, so windows cut the cost per step."""
    griffin_lim_iters: int = 32
    """Griffin-Lim iterations (generator "griffin-lim")."""
    generator: str = "griffin-lim"
    """Mel → waveform: "griffin-lim" (CPU floor, no weights); a trained HiFi-GAN-class name later."""

    @property
    def upsample(self) -> int:
        """Mel frames per unit frame."""
        return frame_upsample(self.frame_rate, self.sample_rate, self.hop_length)

    @property
    def mel_offset(self) -> int:
        """Mel frames before unit frame 0's first mel frame (feature-window centre / hop)."""
        return round(FEATURE_CENTRE / self.hop_length)


SIZES: dict[str, dict[str, Any]] = {
    "tiny": {},
    "base": {"dim": 256, "encoder_layers": 4, "heads": 4, "decoder_dim": 384, "decoder_layers": 6,
             "max_train_units": 256},
}
"""Named vocoder sizes; a model preset picks one by VOCODER_SIZE_OF (tiny for CPU presets)."""
VOCODER_SIZE_OF = {"tiny": "tiny", "smollm2-135m": "tiny", "llama-3b": "base", "llama-8b": "base"}
"""Vocoder size of each model preset (GPU presets would also name a HiFi-GAN-class generator)."""


def frame_upsample(frame_rate: float, sample_rate: int = SAMPLE_RATE, hop: int = 160) -> int:
    """Mel frames per unit frame; ConfigError unless the unit stride is a whole number of mel hops."""
    stride = sample_rate / frame_rate if frame_rate > 0 else 0.0
    ratio = stride / hop
    if frame_rate <= 0 or ratio < 1 or abs(ratio - round(ratio)) > 1e-6:
        raise ConfigError(f"unit frame rate {frame_rate:g} fps is not a whole multiple of the mel hop "
                          f"({hop} samples at {sample_rate} Hz = {sample_rate / hop:g} fps); the vocoder "
                          "needs corpus features at 100, 50, 25, ... fps")
    return round(ratio)


def check_config(cfg: VocoderConfig) -> VocoderConfig:
    """ConfigError naming the first bad field; the config unchanged."""
    if cfg.num_units < 1:
        raise ConfigError(f"vocoder num_units must be >= 1, got {cfg.num_units}")
    if cfg.generator not in GENERATORS:
        raise ConfigError(f"vocoder generator {cfg.generator!r} is not available; built in: {GENERATORS}")
    if cfg.dim % cfg.heads:
        raise ConfigError(f"vocoder dim {cfg.dim} must be divisible by heads {cfg.heads}")
    cfg.upsample  # noqa: B018 - raises for a frame rate the mel hop cannot follow
    return cfg


def config_to_dict(cfg: VocoderConfig) -> dict[str, Any]:
    """JSON-ready record of a config (what BuildInfo.extra holds)."""
    return dataclasses.asdict(cfg)


def config_from_dict(data: dict[str, Any]) -> VocoderConfig:
    """Inverse of config_to_dict; ConfigError on unknown fields."""
    fields = {f.name for f in dataclasses.fields(VocoderConfig)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"vocoder config has unknown fields {unknown}")
    return check_config(VocoderConfig(**data))


# ----------------------------------------------------------------------------- signal


@functools.lru_cache(maxsize=4)
def _mel_transform(sr: int, n_fft: int, win: int, hop: int, n_mels: int) -> nn.Module:
    """The (cached) magnitude mel transform of these settings, over frames the caller has padded."""
    import torchaudio

    return torchaudio.transforms.MelSpectrogram(
        sample_rate=sr, n_fft=n_fft, win_length=win, hop_length=hop, n_mels=n_mels, power=1.0,
        center=False, norm="slaney", mel_scale="slaney")


def log_mel(audio: np.ndarray, cfg: VocoderConfig, first: int = 0, frames: int | None = None) -> Tensor:
    """(F, n_mels) log-mel of 1-D int16/float 16 kHz audio: centred frames (hop cfg.hop_length, the signal
    reflect-padded by n_fft / 2 as torch.stft(center=True) does), frames [first, first + frames) only."""
    wav = np.asarray(audio)
    x = torch.from_numpy(wav.astype(np.float32) / (32768.0 if wav.dtype == np.int16 else 1.0))
    pad, hop = cfg.n_fft // 2, cfg.hop_length
    total = 1 + len(x) // hop
    last = total if frames is None else min(total, first + frames)
    if last <= first:
        return torch.zeros(0, cfg.n_mels)
    x = F.pad(x[None, None], (pad, pad), mode="reflect" if len(x) > pad else "constant")[0, 0]
    seg = x[first * hop : (last - 1) * hop + cfg.n_fft]  # only the samples these frames read
    mel = _mel_transform(cfg.sample_rate, cfg.n_fft, cfg.win_length, hop, cfg.n_mels)(seg)
    return torch.log(mel.clamp_min(1e-5)).T.contiguous()  # (F, n_mels)


def target_mel(audio: np.ndarray, frames: int, cfg: VocoderConfig, start: int = 0) -> Tensor:
    """(frames · upsample, n_mels) log-mel aligned with unit frames [start, start + frames) (edge-padded if
    the audio is short)."""
    need = frames * cfg.upsample
    mel = log_mel(audio, cfg, cfg.mel_offset + start * cfg.upsample, need)  # (≤ need, n_mels)
    if mel.shape[0] < need:
        pad = mel[-1:] if mel.shape[0] else torch.full((1, cfg.n_mels), math.log(1e-5))
        mel = torch.cat([mel, pad.expand(need - mel.shape[0], -1)])
    return mel[:need]


@functools.lru_cache(maxsize=4)
def _inverse(sr: int, n_fft: int, win: int, hop: int, n_mels: int, iters: int) -> tuple[nn.Module, nn.Module]:
    """(InverseMelScale, GriffinLim) of these settings (cached)."""
    import torchaudio

    inv = torchaudio.transforms.InverseMelScale(n_stft=n_fft // 2 + 1, n_mels=n_mels, sample_rate=sr,
                                                norm="slaney", mel_scale="slaney")
    gl = torchaudio.transforms.GriffinLim(n_fft=n_fft, win_length=win, hop_length=hop, power=1.0,
                                          n_iter=iters, momentum=0.99, rand_init=False)
    return inv, gl


def griffin_lim(mel: Tensor, cfg: VocoderConfig) -> Tensor:
    """(F, n_mels) log-mel → (F · hop,) float waveform in [-1, 1] (exactly F · hop samples)."""
    inv, gl = _inverse(cfg.sample_rate, cfg.n_fft, cfg.win_length, cfg.hop_length, cfg.n_mels,
                       cfg.griffin_lim_iters)
    frames = mel.shape[0]
    # Silent frames after the end: the centred iSTFT of F frames gives hop · (F - 1) samples, and the STFT's
    # reflect padding needs more than n_fft / 2 of them.
    short = max(1, math.ceil(cfg.n_fft / cfg.hop_length) + 2 - frames)
    mel = torch.cat([mel.float(), mel.new_full((short, mel.shape[1]), math.log(1e-5))])
    spec = inv(torch.exp(mel.float()).T).clamp_min(0.0)  # (n_fft/2+1, F) magnitude
    wav = gl.forward(spec)  # (hop · (F - 1),)
    out = torch.zeros(frames * cfg.hop_length)
    out[: min(len(wav), len(out))] = wav[: len(out)]
    return out.clamp(-1.0, 1.0)


# ----------------------------------------------------------------------------- modules


class ConvBlock(nn.Module):
    """Residual conv over time: Conv1d → ReLU → LayerNorm → dropout, masked to the valid frames."""

    def __init__(self, dim: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """(B, T, D), mask (B, T) → (B, T, D)."""
        h = self.conv((x * mask[..., None]).transpose(1, 2)).transpose(1, 2)  # (B, T, D)
        return x + self.drop(self.norm(F.relu(h)))


class DurationPredictor(nn.Module):
    """Two convs + Linear: log frames per unit (B, U)."""

    def __init__(self, dim: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([ConvBlock(dim, kernel, dropout) for _ in range(2)])
        self.out = nn.Linear(dim, 1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """(B, U, D), mask (B, U) → (B, U) log-durations."""
        for block in self.blocks:
            x = block(x, mask)
        return self.out(x).squeeze(-1)


def regulate(x: Tensor, durations: Tensor, upsample: int) -> tuple[Tensor, Tensor, Tensor]:
    """Length regulator: (B, U, D) repeated by durations (B, U) × upsample → frames (B, F, D), mask (B, F),
    and each frame's relative position inside its unit (B, F) in [0, 1)."""
    reps = durations.clamp_min(0) * upsample  # (B, U)
    lengths = reps.sum(1)  # (B,)
    frames = int(lengths.max().item()) if len(lengths) else 0
    out = x.new_zeros(x.shape[0], max(frames, 1), x.shape[2])
    pos = x.new_zeros(x.shape[0], max(frames, 1))
    for b in range(x.shape[0]):
        r = reps[b]
        n = int(lengths[b])
        out[b, :n] = torch.repeat_interleave(x[b], r, dim=0)
        starts = torch.repeat_interleave(torch.cumsum(r, 0) - r, r)
        pos[b, :n] = (torch.arange(n, device=x.device) - starts) / torch.repeat_interleave(r, r)
    mask = torch.arange(out.shape[1], device=x.device)[None] < lengths[:, None]
    return out, mask, pos


class UnitVocoder(nn.Module):
    """Units → durations and log-mel; the generator turns log-mel into a waveform."""

    def __init__(self, cfg: VocoderConfig) -> None:
        super().__init__()
        self.cfg = check_config(cfg)
        d, c = cfg.dim, cfg.decoder_dim
        self.embed = nn.Embedding(cfg.num_units, d)
        self.pre = nn.ModuleList([ConvBlock(d, cfg.kernel, cfg.dropout) for _ in range(2)])
        layer = nn.TransformerEncoderLayer(d, cfg.heads, 2 * d, cfg.dropout, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.encoder_layers, enable_nested_tensor=False)
        self.durations = DurationPredictor(d, cfg.kernel, cfg.dropout)
        self.to_frames = nn.Linear(d + 2, c)  # + position in the unit and log duration
        self.decoder = nn.ModuleList(ConvBlock(c, cfg.kernel, cfg.dropout) for _ in range(cfg.decoder_layers))
        self.to_mel = nn.Linear(c, cfg.n_mels)
        self.build_info: BuildInfo | None = None

    @property
    def num_units(self) -> int:
        """K."""
        return self.cfg.num_units

    def encode(self, units: Tensor, unit_lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, U) units → states (B, U, D), mask (B, U), predicted log-durations (B, U)."""
        mask = torch.arange(units.shape[1], device=units.device)[None] < unit_lengths[:, None]  # (B, U)
        x = self.embed(units)  # (B, U, D)
        for block in self.pre:
            x = block(x, mask)
        x = self.encoder(x, src_key_padding_mask=~mask)
        return x, mask, self.durations(x, mask)

    def decode(self, x: Tensor, durations: Tensor) -> tuple[Tensor, Tensor]:
        """States (B, U, D) and frame durations (B, U) → log-mel (B, F, n_mels) and frame mask (B, F)."""
        frames, mask, pos = regulate(x, durations, self.cfg.upsample)  # (B, F, D), (B, F), (B, F)
        log_d = torch.log(durations.clamp_min(1).float())[..., None]  # (B, U, 1)
        logd, _, _ = regulate(log_d, durations, self.cfg.upsample)  # (B, F, 1)
        h = self.to_frames(torch.cat([frames, pos[..., None], logd], dim=-1))  # (B, F, C)
        for block in self.decoder:
            h = block(h, mask)
        return self.to_mel(h), mask

    def forward(self, units: Tensor, unit_lengths: Tensor, durations: Tensor, mels: Tensor,
                mel_lengths: Tensor) -> dict[str, Tensor]:
        """Losses of one batch: L1 on log-mel frames + MSE on log-durations (gold durations regulate)."""
        x, umask, log_dur = self.encode(units, unit_lengths)
        pred, fmask = self.decode(x, durations * umask)
        n = min(pred.shape[1], mels.shape[1])
        fmask = fmask[:, :n] & (torch.arange(n, device=mels.device)[None] < mel_lengths[:, None])
        mel = (pred[:, :n] - mels[:, :n]).abs().mean(-1)[fmask].mean()
        target = torch.log(durations.clamp_min(1).float())
        duration = F.mse_loss(log_dur[umask], target[umask])
        return {"loss": mel + duration, "mel": mel.detach(), "duration": duration.detach(),
                "num_tokens": fmask.sum()}

    @torch.no_grad()
    def predict(self, units: Tensor, duration_scale: float = 1.0) -> tuple[Tensor, Tensor]:
        """One unit sequence (U,) → predicted durations (U,) in unit frames (≥ 1) and log-mel (F, n_mels).

        Durations are exp(log-duration) · duration_scale rounded cumulatively (the total is the rounded
        sum, not a sum of per-unit roundings, which shortens runs of 1–2 frame units)."""
        units = units.reshape(1, -1)
        x, _, log_dur = self.encode(units, torch.tensor([units.shape[1]], device=units.device))
        ends = torch.round(torch.cumsum(torch.exp(log_dur) * duration_scale, dim=1))  # (1, U)
        durations = torch.diff(ends, dim=1, prepend=ends.new_zeros(1, 1)).long().clamp_min(1)  # (1, U)
        mel, _ = self.decode(x, durations)
        return durations[0], mel[0]

    def generate(self, mel: Tensor) -> Tensor:
        """(F, n_mels) log-mel → (F · hop,) float waveform with the configured generator."""
        if self.cfg.generator == "griffin-lim":
            return griffin_lim(mel, self.cfg)
        raise ConfigError(f"vocoder generator {self.cfg.generator!r} is not available")


def vocoder_config(preset: ModelPreset, codebook: dict[str, Any]) -> VocoderConfig:
    """The vocoder config of a model preset over a corpus codebook (num_units, frame_rate, sha256, ...)."""
    size = SIZES[VOCODER_SIZE_OF.get(preset.name, "tiny")]
    if not codebook.get("num_units"):
        raise ConfigError("the vocoder needs the corpus codebook's num_units")
    return check_config(VocoderConfig(num_units=int(codebook["num_units"]),
                                      frame_rate=float(codebook.get("frame_rate", 100.0)),
                                      codebook=dict(codebook), **size))


def build_vocoder(preset: ModelPreset, cfg: VocoderConfig, *, seed: int | None = None) -> UnitVocoder:
    """A fresh vocoder (seeded when `seed` is given) stamped with its BuildInfo."""
    if seed is not None:
        torch.manual_seed(seed)
    model = UnitVocoder(cfg)
    model.build_info = BuildInfo("vocoder", preset, "", frozenset(), config_to_dict(cfg))
    return model


# ----------------------------------------------------------------------------- batches


def _row_units(row: dict[str, Any], side: str) -> tuple[np.ndarray, np.ndarray]:
    """(units, durations) of one side ("question"/"answer") of a corpus row, checked."""
    units = np.asarray(row[f"{side}_units"], dtype=np.int64)
    durs = np.asarray(row[f"{side}_durations"], dtype=np.int64)
    if units.size == 0 or units.shape != durs.shape or durs.min() < 1:
        raise InputError(f"row {row.get('id', '?')!r}: {side} units/durations are empty or mismatched")
    return units, durs


def _window(n: int, limit: int) -> tuple[int, int]:
    """A random [start, end) of at most `limit` of n units (all of them when limit is 0 or n ≤ limit)."""
    if not limit or n <= limit:
        return 0, n
    start = int(torch.randint(0, n - limit + 1, ()).item())  # torch's RNG: seeded per rank, resumed
    return start, start + limit


def collate_vocoder(rows: list[dict[str, Any]], model: Any) -> dict[str, Tensor]:
    """Two examples per corpus row (question and answer speech): units (B, U), unit_lengths (B,),
    durations (B, U) in unit frames (0 on padding), mels (B, F, n_mels) log-mel of the row's audio aligned
    with the unit frames, mel_lengths (B,) with B = 2 · len(rows). In training mode each utterance is cut
    to a random window of at most cfg.max_train_units units (and the matching mel frames)."""
    cfg: VocoderConfig = model.cfg
    limit = cfg.max_train_units if model.training else 0
    seqs, durs, mels = [], [], []
    for row in rows:
        for side in ("question", "answer"):
            units, d = _row_units(row, side)
            if units.max() >= cfg.num_units or units.min() < 0:
                raise InputError(f"row {row.get('id', '?')!r}: {side} units fall outside "
                                 f"[0, {cfg.num_units})")
            a, b = _window(len(units), limit)
            seqs.append(torch.from_numpy(units[a:b]))
            durs.append(torch.from_numpy(d[a:b]))
            mels.append(target_mel(np.asarray(row[f"{side}_audio"]), int(d[a:b].sum()), cfg,
                                   start=int(d[:a].sum())))
    return {
        "units": nn.utils.rnn.pad_sequence(seqs, batch_first=True),
        "unit_lengths": torch.tensor([len(s) for s in seqs]),
        "durations": nn.utils.rnn.pad_sequence(durs, batch_first=True),
        "mels": nn.utils.rnn.pad_sequence(mels, batch_first=True),
        "mel_lengths": torch.tensor([len(m) for m in mels]),
    }


def vocoder_length(row: dict[str, Any]) -> int:
    """Unit frames of a row's question and answer speech (what a batch's decoder runs over)."""
    return int(np.sum(row["question_durations"]) + np.sum(row["answer_durations"]))

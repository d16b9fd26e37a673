"""Inference helpers: a question longer than the speech encoder's window is refused, not cut silently."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from core.errors import InputError
from tasks.inference import check_window


class _S2T(nn.Module):
    def __init__(self, seconds: int) -> None:
        super().__init__()
        self.max_samples = seconds * 16000


class _Echo(nn.Module):
    def __init__(self, seconds: int) -> None:
        super().__init__()
        self.s2t = _S2T(seconds)


@pytest.mark.parametrize("model", [_S2T(30), _Echo(30)])
def test_a_question_longer_than_the_window_is_refused(model: nn.Module) -> None:
    check_window(model, np.zeros(30 * 16000, np.int16), "q.wav")  # exactly the window: fine
    with pytest.raises(InputError, match=r"q\.wav lasts 60\.0 s, longer than the model's 30 s speech window"):
        check_window(model, np.zeros(60 * 16000, np.int16), "q.wav")

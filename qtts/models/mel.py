"""The speaker encoder's log-mel front end, as upstream's `mel_spectrogram` computes it.

The filterbank is librosa's `filters.mel` (Slaney mel scale, Slaney area normalization),
rebuilt here in numpy with the same float64 arithmetic and float32 rounding points.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch.nn import functional as F

from ..config import SAMPLE_RATE

N_FFT = 1024
HOP = 256
N_MELS = 128
FMIN = 0.0
FMAX = 12000.0

_MEL_LINEAR_HZ = 200.0 / 3  # Slaney scale: linear below 1 kHz at 3 mels per 200 Hz ...
_MEL_LOG_HZ = 1000.0
_MEL_LOG_START = _MEL_LOG_HZ / _MEL_LINEAR_HZ
_MEL_LOG_STEP = np.log(6.4) / 27.0  # ... logarithmic above


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale (librosa `hz_to_mel(htk=False)`)."""
    hz = np.asanyarray(hz, dtype=np.float64)
    mel = hz / _MEL_LINEAR_HZ
    log_region = hz >= _MEL_LOG_HZ
    mel[log_region] = _MEL_LOG_START + np.log(hz[log_region] / _MEL_LOG_HZ) / _MEL_LOG_STEP
    return mel


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of `hz_to_mel`."""
    mel = np.asanyarray(mel, dtype=np.float64)
    hz = _MEL_LINEAR_HZ * mel
    log_region = mel >= _MEL_LOG_START
    hz[log_region] = _MEL_LOG_HZ * np.exp(_MEL_LOG_STEP * (mel[log_region] - _MEL_LOG_START))
    return hz


@lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS,
                   fmin: float = FMIN, fmax: float = FMAX) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) float32 triangular filters, equal to
    `librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)`."""
    fft_hz = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(np.array([fmin]))[0], hz_to_mel(np.array([fmax]))[0], n_mels + 2))
    widths = np.diff(edges_hz)
    ramps = np.subtract.outer(edges_hz, fft_hz)
    weights = np.zeros((n_mels, n_fft // 2 + 1), dtype=np.float32)
    for i in range(n_mels):
        rising = -ramps[i] / widths[i]
        falling = ramps[i + 2] / widths[i + 1]
        weights[i] = np.maximum(0, np.minimum(rising, falling))
    weights *= (2.0 / (edges_hz[2:n_mels + 2] - edges_hz[:n_mels]))[:, np.newaxis]  # constant energy per band
    weights.flags.writeable = False
    return weights


def mel_spectrogram(wav: torch.Tensor, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, hop: int = HOP,
                    n_mels: int = N_MELS, fmin: float = FMIN, fmax: float = FMAX) -> torch.Tensor:
    """Log-mel frames (B, frames, n_mels) in float32 of waveforms (B, N).

    Reflect-pads (n_fft - hop) / 2 on each side, takes an uncentered STFT with a periodic Hann
    window, magnitude sqrt(re² + im² + 1e-9), projects on the mel filters, then log(max(x, 1e-5)).
    frames = (N + 2 * ((n_fft - hop) // 2) - n_fft) // hop + 1.
    """
    wav = wav.float()
    basis = torch.from_numpy(mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax).copy()).to(wav.device)
    window = torch.hann_window(n_fft, device=wav.device)
    pad = (n_fft - hop) // 2
    padded = F.pad(wav.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(padded, n_fft, hop_length=hop, win_length=n_fft, window=window, center=False,
                      normalized=False, onesided=True, return_complex=True)
    magnitude = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + 1e-9)
    mel = torch.matmul(basis, magnitude)
    return torch.log(torch.clamp(mel, min=1e-5)).transpose(1, 2)

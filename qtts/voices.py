"""Voice prompts for cloning: the speaker embedding and, for ICL, the reference codes and text."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import InvalidRequestError

FORMAT_VERSION = 1


@dataclass
class VoicePrompt:
    """What a Base model needs to speak in a cloned voice.

    speaker_embedding: (enc_dim,) x-vector from the speaker encoder.
    reference_codes: (frames, 16) codec codes of the reference audio (ICL mode) or None.
    reference_text: transcript of the reference audio (ICL mode) or None.
    """

    speaker_embedding: torch.Tensor
    reference_codes: torch.Tensor | None = None
    reference_text: str | None = None

    @property
    def icl(self) -> bool:
        return self.reference_codes is not None and bool(self.reference_text)

    def save(self, path: str | Path) -> None:
        tensors = {"speaker_embedding": self.speaker_embedding.detach().float().cpu().contiguous()}
        if self.reference_codes is not None:
            tensors["reference_codes"] = self.reference_codes.detach().to(torch.int64).cpu().contiguous()
        metadata = {"format": "qtts-voice", "version": str(FORMAT_VERSION),
                    "reference_text": json.dumps(self.reference_text)}
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> "VoicePrompt":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            tensors = load_file(str(path))
        except Exception as exc:  # safetensors raises several types for a bad file
            raise InvalidRequestError(f"{path} is not a qtts voice file: {exc}") from exc
        if metadata.get("format") != "qtts-voice" or "speaker_embedding" not in tensors:
            raise InvalidRequestError(f"{path} is not a qtts voice file")
        return cls(speaker_embedding=tensors["speaker_embedding"],
                   reference_codes=tensors.get("reference_codes"),
                   reference_text=json.loads(metadata.get("reference_text", "null")))

"""Access to the upstream reference implementation (qwen-tts-hf), the test oracle.

Importing this module makes the oracle importable on transformers 5.x for fresh random
models (see shared/reference/oracle-notes.md). Tests that need it call `require_oracle()`.
"""
import os
import sys

import pytest

_SHIMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "oracle_shims")


def require_oracle():
    """Import and return the `qwen_tts` package, or skip the test when it is not installed."""
    try:
        import torchaudio  # noqa: F401
    except ImportError:
        sys.path.insert(0, _SHIMS)
    qwen_tts = pytest.importorskip("qwen_tts")
    _patch_rope_init()
    return qwen_tts


def _patch_rope_init():
    from qwen_tts import _transformers_compat as compat
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if getattr(compat, "_qtts_patched", False):
        return
    original = compat._default_rope_parameters

    def rope_with_fallback(config, device=None, seq_len=None, layer_type=None):
        if getattr(config, "rope_theta", None) is None:
            params = getattr(config, "rope_parameters", None) or {}
            object.__setattr__(config, "rope_theta", params.get("rope_theta", 10000.0))
        return original(config, device, seq_len, layer_type)

    ROPE_INIT_FUNCTIONS["default"] = rope_with_fallback
    compat._default_rope_parameters = rope_with_fallback
    compat._qtts_patched = True

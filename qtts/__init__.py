"""qtts: fast inference and streaming for the Qwen3-TTS 12Hz model family."""
from .api import TTS, Speech
from .voices import VoicePrompt

__all__ = ["TTS", "Speech", "VoicePrompt"]

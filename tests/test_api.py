"""The Python API's batched generation."""
import torch

from qtts.api import TTS


def test_a_batch_with_a_long_prompt_and_a_long_cap_stays_inside_its_cache(tiny_custom_voice):
    """Finished rows keep stepping until the last row ends; the cache must hold that."""
    tts = TTS.from_pretrained(tiny_custom_voice, device="cpu", dtype="fp32")
    long_prompt = tts.request("word " * 90, speaker="aiden", greedy=True, max_frames=2, non_streaming_mode=True)
    long_cap = tts.request("Hi.", speaker="aiden", greedy=True, max_frames=60, min_frames=60)
    (short_codes, _), (long_codes, reason) = tts.generate_codes([long_prompt, long_cap])
    assert short_codes.shape[0] <= 2 and long_codes.shape[0] == 60 and reason == "length"
    alone, _ = tts.generate_codes([long_cap])[0]
    assert torch.equal(long_codes, alone)

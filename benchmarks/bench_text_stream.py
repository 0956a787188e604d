"""Voice-agent load: N websocket sessions, each fed a text word by word as an LLM writes it.

usage: python benchmarks/bench_text_stream.py [--url URL | --size 1.7b] [--sessions 1,8,32]
       [--modes stream,sentence] [--tokens-per-second 30] [--out FILE] [--smoke]
Each session sends `session.update` (a built-in voice, text_mode, pcm), then the words of a few sentences at
--tokens-per-second with a little jitter, then `input.done`. Sessions start spread over one second. Measured
per session: the time from the first word sent to the first audible sample received; playback underruns
(audio played in real time from its first byte, across utterances), split into those that began before
`input.done` was sent (the text may have been behind the speech) and after it (the engine's); the text-wait
time the server reports (`audio.done.text_wait_s`). text_mode "stream" speaks from the first words;
"sentence" waits for each sentence's end. Writes JSON (default benchmarks/results/text_stream_<size>_<device>.json).
"""
import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_serve import AUDIBLE_LEVEL, make_prompts, server_process  # noqa: E402

from qtts.bench import percentile, save_results  # noqa: E402

SAMPLE_RATE = 24000
BYTES_PER_SECOND = 2 * SAMPLE_RATE
STALL_TOLERANCE_S = 0.005


def session_text(rng: random.Random, prompts: list[str], sentences: int) -> str:
    return " ".join(rng.choice(prompts) for _ in range(sentences))


async def run_session(url: str, voice: str, mode: str, text: str, delay_s: float, seed: int,
                      tokens_per_second: float, extra: dict) -> dict:
    from websockets.asyncio.client import connect

    await asyncio.sleep(delay_s)
    words = text.split(" ")
    rng = random.Random(seed)
    result = {"first_audible_ms": None, "audio_s": 0.0, "underruns": 0, "engine_underruns": 0, "stall_s": 0.0,
              "engine_stall_s": 0.0, "text_wait_s": 0.0, "errors": []}
    async with connect(url.replace("http", "ws", 1) + "/v1/audio/speech/stream", max_size=None) as ws:
        json.loads(await ws.recv())  # session.created
        await ws.send(json.dumps({"type": "session.update", "voice": voice, "text_mode": mode, "language": "english",
                                  "response_format": "pcm", "seed": seed, **extra}))
        json.loads(await ws.recv())  # session.updated
        state = {"first_word_at": None, "done_sent_at": None}

        async def write() -> None:
            for index, word in enumerate(words):
                if state["first_word_at"] is None:
                    state["first_word_at"] = time.perf_counter()
                await ws.send(json.dumps({"type": "input.text", "text": word + (" " if index < len(words) - 1 else "")}))
                await asyncio.sleep(rng.uniform(0.7, 1.3) / tokens_per_second)
            await ws.send(json.dumps({"type": "input.done"}))
            state["done_sent_at"] = time.perf_counter()

        writer = asyncio.create_task(write())
        played_until = None  # when the audio received so far runs out, playing from its first byte
        async for message in ws:
            now = time.perf_counter()
            if isinstance(message, bytes):
                samples = np.frombuffer(message[: len(message) // 2 * 2], "<i2")
                if result["first_audible_ms"] is None and np.abs(samples).max(initial=0) > AUDIBLE_LEVEL:
                    result["first_audible_ms"] = 1000 * (now - state["first_word_at"])
                if played_until is None:
                    played_until = now
                elif now > played_until + STALL_TOLERANCE_S:
                    stall = now - played_until
                    result["underruns"] += 1
                    result["stall_s"] += stall
                    if state["done_sent_at"] is not None and played_until > state["done_sent_at"]:
                        result["engine_underruns"] += 1
                        result["engine_stall_s"] += stall
                    played_until = now
                played_until += len(samples) / SAMPLE_RATE
                result["audio_s"] += len(samples) / SAMPLE_RATE
                continue
            event = json.loads(message)
            if event["type"] == "audio.done":
                result["text_wait_s"] += event.get("text_wait_s", 0.0)
            elif event["type"] == "error":
                result["errors"].append(event["error"]["message"])
            elif event["type"] == "session.done":
                break
        await writer
    return result


async def level(args, url: str, voice: str, mode: str, sessions: int) -> dict:
    rng = random.Random(f"{args.seed}:{sessions}")
    prompts = make_prompts(seed=args.seed)
    texts = [session_text(rng, prompts, args.sentences) for _ in range(sessions)]
    delays = sorted(rng.uniform(0, args.spread_s) for _ in range(sessions)) if sessions > 1 else [0.0]
    started = time.perf_counter()
    results = await asyncio.gather(*(run_session(url, voice, mode, text, delay, args.seed + index,
                                                 args.tokens_per_second, args.extra)
                                     for index, (text, delay) in enumerate(zip(texts, delays))))
    wall_s = time.perf_counter() - started
    first = [r["first_audible_ms"] for r in results if r["first_audible_ms"] is not None]
    summary = {"mode": mode, "sessions": sessions, "words": sum(len(t.split()) for t in texts),
               "first_audible_ms": {q: round(percentile(first, p), 1) for q, p in (("p50", 50), ("p95", 95), ("p99", 99))}
               if first else None,
               "silent_sessions": sessions - len(first),
               "underrun_sessions": sum(r["underruns"] > 0 for r in results),
               "underruns": sum(r["underruns"] for r in results), "stall_s": round(sum(r["stall_s"] for r in results), 3),
               "engine_underruns": sum(r["engine_underruns"] for r in results),
               "engine_stall_s": round(sum(r["engine_stall_s"] for r in results), 3),
               "text_wait_s": round(sum(r["text_wait_s"] for r in results), 3),
               "audio_s_per_s": round(sum(r["audio_s"] for r in results) / wall_s, 2), "wall_s": round(wall_s, 2),
               "errors": sorted({e for r in results for e in r["errors"]})}
    print(json.dumps(summary), flush=True)
    return summary


async def measure(args, url: str, result: dict, save) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        models = (await client.get("/v1/models")).json()["data"][0]
    voice = models["voices"][0] if models.get("voices") else "designed"
    if models.get("model_type") == "voice_design":
        args.extra.setdefault("instructions", "A calm, clear adult voice.")
    for mode in args.modes:
        for sessions in args.sessions:
            result["levels"].append(await level(args, url, voice, mode, sessions))
            save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="a running server (default: start `qtts serve` on the --size fixture)")
    parser.add_argument("--size", default="1.7b")
    parser.add_argument("--type", default="custom_voice")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-queue", type=int, default=256)
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--engine-process", default="auto")
    parser.add_argument("--switch-interval-us", type=float, default=None)
    parser.add_argument("--server-args", default="")
    parser.add_argument("--startup-timeout", type=float, default=900.0)
    parser.add_argument("--sessions", default="1,8,32")
    parser.add_argument("--modes", default="stream,sentence")
    parser.add_argument("--tokens-per-second", type=float, default=30.0)
    parser.add_argument("--sentences", type=int, default=2, help="prompts joined into one session's text")
    parser.add_argument("--spread-s", type=float, default=1.0, help="sessions start spread over this long")
    parser.add_argument("--max-frames", type=int, default=None, help="cap per utterance (the smoke run's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny fixture on CPU, 1 and 2 sessions (a check)")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.device, args.sessions, args.max_frames, args.sentences = "tiny", "cpu", "1,2", 12, 1
    args.sessions = [int(n) for n in args.sessions.split(",") if n]
    args.modes = [m for m in args.modes.split(",") if m]
    args.extra = {"max_frames": args.max_frames} if args.max_frames else {}

    import torch

    from qtts.testing.fixtures import fixture_dir

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") and torch.cuda.is_available() \
        else "cpu"
    result = {"benchmark": "text_stream", "device": device_name, "size": args.size,
              "tokens_per_second": args.tokens_per_second, "sentences_per_session": args.sentences,
              "audible_level_int16": AUDIBLE_LEVEL, "levels": []}
    out = args.out or ROOT / "benchmarks" / "results" / f"text_stream_{args.size}_{device_name.replace(' ', '_')}.json"

    def save() -> None:
        save_results(result, out)

    if args.url:
        asyncio.run(measure(args, args.url.rstrip("/"), result, save))
    else:
        with server_process(args, fixture_dir(args.type, args.size)) as (url, startup_s):
            result["startup_s"] = startup_s
            asyncio.run(measure(args, url, result, save))
    save()
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()

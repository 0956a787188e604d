"""Serving load test: `qtts serve` in a subprocess, streaming clients over HTTP on localhost (asyncio + httpx).

usage: python benchmarks/bench_serve.py [--size 1.7b | --model FOLDER] [--max-batch 64] [--rates 1,2,4,...]
       [--concurrency 1,2,4,...] [--duration 30] [--out FILE]; --smoke: a short CPU run on the tiny fixture.

Open loop: Poisson arrivals at each fixed rate for `duration` seconds. Closed loop: N clients, each sending its
next request as soon as the last ended. Every request streams 24 kHz s16le PCM (`stream_format=audio`) and is
forced to a frame count from its text length (random weights make EOS timing arbitrary). Per request:
  first byte      scheduled send -> first body byte
  first audible   scheduled send -> arrival of the first sample with |x| > 32 (1e-3 of full scale)
  end to end      scheduled send -> last byte
  underruns       playback starts at the first audible sample and runs in real time; a piece that arrives
                  after its playback time stalls playback until it arrives (counted, stall seconds summed;
                  where the first stall happened, and the lead the first audible piece gave, are reported)
  stream rtf      audio seconds / end-to-end seconds (> 1: faster than real time)
Each level also reports the server's pauses while it ran (engine loop iterations, garbage collections, and how
late the server's event loop ran a 10 ms timer: counts over 10/20/50/100 ms, from /metrics).
The rate sweep stops after the first rate that is overloaded (p95 first audible > --stop-p95-ms, any failure,
or over 1% answered 429); the concurrency sweep stops on failures only (latency past max_batch is queueing).
One JSON line per rate or concurrency is printed, and the JSON file is rewritten after each. With
--client-processes N each level's load is split among N client processes (rate / N each, or clients / N), so that
at high load the client's own event loop is not what falls behind (client_loop_lag shows whether it did).
"""
import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qtts.bench import save_results  # noqa: E402
from qtts.engine.pauses import DurationHistogram  # noqa: E402
from qtts.server.metrics import histogram_family, watch_loop_lag  # noqa: E402
from qtts.testing.ports import free_port  # noqa: E402

SAMPLE_RATE = 24000
FRAMES_PER_SECOND = 12.5
SAMPLES_PER_FRAME = 1920
CHARS_PER_SECOND = 15.0  # English read speech; sets each request's forced frame count
AUDIBLE_LEVEL = 32  # int16 magnitude: 1e-3 of full scale
PROMPT_COUNT = 500

NAMES = ["Anna", "Ben", "Carlos", "Diana", "Ethan", "Fiona", "George", "Hannah", "Ivan", "Julia", "Kevin", "Laura",
         "Marcus", "Nina", "Oliver", "Priya", "Rosa", "Samuel", "Tara", "Victor"]
PEOPLE = NAMES + ["my neighbor", "the new manager", "our teacher", "the delivery driver", "a young doctor",
                  "the old fisherman", "the team captain", "my younger sister", "the receptionist", "a local farmer"]
VERBS = ["found", "repaired", "painted", "borrowed", "cleaned", "ordered", "carried", "forgot", "opened",
         "described", "sold", "photographed"]
THINGS = ["the broken bicycle", "a small wooden box", "the kitchen window", "an umbrella with blue stripes",
          "the last train ticket", "a map of the city", "the garden gate", "two cups of coffee", "the heavy suitcase",
          "a letter from her grandmother", "the red notebook", "an old piano"]
PLACES = ["near the station", "behind the library", "at the edge of the forest", "in the crowded market",
          "on the second floor", "by the river", "outside the bakery", "in the parking lot", "across the street"]
WHEN = ["yesterday morning", "last weekend", "just before sunset", "after the meeting", "early on Monday",
        "during the storm", "late last night", "three days ago", "before breakfast"]
WHY = ["because nobody else had the time", "although it was starting to rain", "while everyone else was asleep",
       "so that the children could play outside", "since the shop was closing soon", "before the guests arrived",
       "even though the instructions were unclear", "as soon as the lights came back on"]
LATER = ["tomorrow afternoon", "next Friday", "by the end of the week", "before noon", "on Saturday morning"]
FEELINGS = ["absolutely wonderful", "a complete surprise", "surprisingly difficult", "quite funny", "a little sad"]
CITIES = ["Chicago", "Lisbon", "Tokyo", "Nairobi", "Toronto", "Melbourne", "Oslo", "Denver"]
HOURS = ["seven thirty", "nine fifteen", "half past two", "a quarter to six", "noon", "ten o'clock"]
TEMPLATES = [
    "{person} {verb} {thing} {place} {when}.",
    "{when}, {person} {verb} {thing} {why}.",
    "Do you know whether {person} {verb} {thing} {when}?",
    "Please remember to bring {thing} {place} {later}.",
    "I can't believe {person} {verb} {thing} {place}; it was {feeling}!",
    "The flight to {city} leaves at {hour}, so {person} should be {place} by {hour2}.",
    "{person} told me that {person2} {verb} {thing} {why}.",
]


def make_prompts(count: int = PROMPT_COUNT, seed: int = 0) -> list[str]:
    """`count` distinct English sentences of 2 to 10 seconds of speech, the same for the same seed."""
    rng = random.Random(seed)
    prompts: dict[str, None] = {}
    while len(prompts) < count:
        words = {"person": rng.choice(PEOPLE), "person2": rng.choice(PEOPLE), "verb": rng.choice(VERBS),
                 "thing": rng.choice(THINGS), "place": rng.choice(PLACES), "when": rng.choice(WHEN),
                 "why": rng.choice(WHY), "later": rng.choice(LATER), "feeling": rng.choice(FEELINGS),
                 "city": rng.choice(CITIES), "hour": rng.choice(HOURS), "hour2": rng.choice(HOURS)}
        text = rng.choice(TEMPLATES).format(**words)
        prompts[text[0].upper() + text[1:]] = None
    return list(prompts)


def frames_for(text: str) -> int:
    """The frame count a request is forced to: its text read at CHARS_PER_SECOND."""
    return max(8, round(len(text) / CHARS_PER_SECOND * FRAMES_PER_SECOND))


@dataclass
class Outcome:
    """One request; times in seconds from its scheduled send."""

    status: int  # HTTP status, 0 for a transport error
    expected_samples: int
    samples: int = 0
    first_byte_s: float | None = None
    first_audible_s: float | None = None
    end_s: float | None = None
    underruns: int = 0
    stall_s: float = 0.0
    first_stall_at_s: float | None = None  # playback position (audio seconds) of the first stall
    lead_s: float | None = None  # audio after the first audible sample in the piece that carried it
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


class Playback:
    """Tracks a PCM stream as its pieces arrive, played in real time from its first audible sample."""

    def __init__(self, outcome: Outcome, sent_at: float):
        self.outcome, self.sent_at = outcome, sent_at
        self.pending = b""  # an odd trailing byte
        self.audible_at: float | None = None
        self.audible_index = 0

    def receive(self, data: bytes, now: float) -> None:
        out = self.outcome
        if out.first_byte_s is None:
            out.first_byte_s = now - self.sent_at
        data = self.pending + data
        whole = len(data) // 2 * 2
        self.pending = data[whole:]
        pcm = np.frombuffer(data[:whole], "<i2")
        if not len(pcm):
            return
        if self.audible_at is not None:
            due = self.audible_at + out.stall_s + (out.samples - self.audible_index) / SAMPLE_RATE
            if now > due:
                if out.first_stall_at_s is None:
                    out.first_stall_at_s = (out.samples - self.audible_index) / SAMPLE_RATE
                out.underruns += 1
                out.stall_s += now - due
        else:
            loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > AUDIBLE_LEVEL)
            if loud.size:
                self.audible_at, self.audible_index = now, out.samples + int(loud[0])
                out.first_audible_s = now - self.sent_at
                out.lead_s = (len(pcm) - int(loud[0])) / SAMPLE_RATE
        out.samples += len(pcm)


class Load:
    """The HTTP client, the request bodies, and how many requests are in flight."""

    def __init__(self, client: httpx.AsyncClient, prompts: list[str], voice: dict):
        self.client, self.prompts, self.voice = client, prompts, voice
        self.in_flight = self.peak_in_flight = 0
        self.client_lag_s = 0.0  # how late the client sent anything: its own overhead

    def reset(self) -> None:
        self.peak_in_flight = self.in_flight
        self.client_lag_s = 0.0

    async def speak(self, index: int, sent_at: float) -> Outcome:
        """Stream prompt `index` (modulo the set); `sent_at` is its scheduled send time."""
        text = self.prompts[index % len(self.prompts)]
        frames = frames_for(text)
        body = {"model": "qtts", "input": text, "response_format": "pcm", "stream_format": "audio",
                "language": "english", "seed": index, "min_frames": frames, "max_frames": frames, **self.voice}
        outcome = Outcome(status=0, expected_samples=frames * SAMPLES_PER_FRAME)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        self.client_lag_s = max(self.client_lag_s, time.perf_counter() - sent_at)
        try:
            async with self.client.stream("POST", "/v1/audio/speech", json=body) as response:
                outcome.status = response.status_code
                if response.status_code != 200:
                    outcome.error = (await response.aread()).decode(errors="replace")[:200]
                    return outcome
                playback = Playback(outcome, sent_at)
                async for piece in response.aiter_raw():
                    playback.receive(piece, time.perf_counter())
                outcome.end_s = time.perf_counter() - sent_at
        except httpx.HTTPError as exc:
            outcome.error = f"{type(exc).__name__}: {exc}"[:200]
        finally:
            self.in_flight -= 1
        return outcome


async def open_loop(load: Load, rate: float, duration_s: float, seed: int,
                    count: int | None = None) -> tuple[list[Outcome], float]:
    """Poisson arrivals at `rate` per second for `duration_s` (or exactly `count` of them); the outcomes and the
    wall time until the last ends."""
    rng = random.Random(f"{seed}:{rate}")
    arrivals, at = [], rng.expovariate(rate)
    while (len(arrivals) < count) if count is not None else (at < duration_s):
        arrivals.append(at)
        at += rng.expovariate(rate)
    first_prompt = rng.randrange(len(load.prompts))
    load.reset()
    start = time.perf_counter()
    tasks = []
    for number, at in enumerate(arrivals):
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(load.speak(first_prompt + number, start + at)))
    outcomes = await asyncio.gather(*tasks)
    return outcomes, time.perf_counter() - start


async def closed_loop(load: Load, clients: int, duration_s: float, seed: int) -> tuple[list[Outcome], float]:
    """`clients` streams back to back for `duration_s` (requests started by then finish and count)."""
    outcomes: list[Outcome] = []
    first_prompt = random.Random(f"{seed}:c{clients}").randrange(len(load.prompts))
    load.reset()
    start = time.perf_counter()

    async def client(number: int) -> None:
        index = first_prompt + number
        while time.perf_counter() - start < duration_s:
            outcomes.append(await load.speak(index, time.perf_counter()))
            index += clients

    await asyncio.gather(*(client(number) for number in range(clients)))
    return outcomes, time.perf_counter() - start


def percentiles_ms(values: list[float], low: bool = False) -> dict | None:
    """p50/p95/p99 in ms; with low, the bad end is the low one: p50/p5/p1."""
    if not values:
        return None
    points = (50, 5, 1) if low else (50, 95, 99)
    found = np.percentile(np.asarray(values) * 1000, points)
    return {f"p{point}": round(float(value), 1) for point, value in zip(points, found)}


def summarize(outcomes: list[Outcome], wall_s: float, load: Load) -> dict:
    """The statistics of one rate or concurrency level."""
    ok = [o for o in outcomes if o.ok]
    rejected = sum(o.status == 429 for o in outcomes)
    errors = sorted({o.error for o in outcomes if not o.ok and o.status != 429})
    rtf = [o.samples / SAMPLE_RATE / o.end_s for o in ok]
    return {
        "requests": len(outcomes), "ok": len(ok), "rejected_429": rejected,
        "failed": len(outcomes) - len(ok) - rejected, "errors": errors[:3],
        "wrong_length": sum(o.samples != o.expected_samples for o in ok),
        "first_byte_ms": percentiles_ms([o.first_byte_s for o in ok if o.first_byte_s is not None]),
        "first_audible_ms": percentiles_ms([o.first_audible_s for o in ok if o.first_audible_s is not None]),
        "silent_streams": sum(o.first_audible_s is None for o in ok),
        "end_to_end_ms": percentiles_ms([o.end_s for o in ok]),
        "peak_in_flight": load.peak_in_flight, "wall_s": round(wall_s, 2),
        "audio_s_per_s": round(sum(o.samples for o in ok) / SAMPLE_RATE / wall_s, 2),
        "underrun_requests": sum(o.underruns > 0 for o in ok),
        "underrun_stall_s": round(sum(o.stall_s for o in ok), 3),
        # where playback first stalled, and how much audio the piece with the first audible sample left
        "underrun_first_at_s": sorted(round(o.first_stall_at_s, 3) for o in ok if o.first_stall_at_s is not None)[:10],
        "first_piece_lead_ms": percentiles_ms([o.lead_s for o in ok if o.lead_s is not None], low=True),
        "stream_rtf": {"p50": round(float(np.percentile(rtf, 50)), 2),
                       "p5": round(float(np.percentile(rtf, 5)), 2)} if rtf else None,
        "client_lag_ms_max": round(load.client_lag_s * 1000, 1),
    }


PAUSE_METRICS = {"qtts_engine_iteration_seconds": "engine_iteration", "qtts_engine_gc_pause_seconds": "engine_gc",
                 "qtts_server_gc_pause_seconds": "server_gc", "qtts_server_loop_lag_seconds": "server_loop_lag"}
PAUSE_THRESHOLDS_MS = (10, 20, 50, 100)  # bucket bounds of qtts.engine.pauses


async def pause_histograms(client: httpx.AsyncClient) -> dict | None:
    """The server's pause histograms from /metrics: {name: {le: cumulative count, "sum": seconds}}."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = (await client.get("/metrics")).text
        families = list(text_string_to_metric_families(text))
    except (httpx.HTTPError, ValueError):
        return None
    return {PAUSE_METRICS[family.name]: scraped(family) for family in families if family.name in PAUSE_METRICS}


def scraped(family) -> dict:
    """A Prometheus histogram family as {"buckets": {le: cumulative count}, "sum": seconds}."""
    return {"buckets": {s.labels["le"]: s.value for s in family.samples if "le" in s.labels},
            "sum": next((s.value for s in family.samples if s.name == family.name + "_sum"), 0.0)}


def client_lag_scrape(histogram: DurationHistogram) -> dict:
    """This client's loop-lag histogram in the shape pause_histograms gives the server's."""
    return {"client_loop_lag": scraped(histogram_family("client_loop_lag", "", histogram.snapshot()))}


def pauses_between(before: dict | None, after: dict | None) -> dict | None:
    """Per pause histogram, what happened between two scrapes: count, total ms, and how many took
    longer than each of PAUSE_THRESHOLDS_MS."""
    if not before or not after:
        return None
    out = {}
    for name, now in after.items():
        then = before.get(name, {"buckets": {}, "sum": 0.0})
        delta = {le: count - then["buckets"].get(le, 0.0) for le, count in now["buckets"].items()}
        total = delta.get("+Inf", 0.0)
        out[name] = {"count": int(total), "total_ms": round((now["sum"] - then["sum"]) * 1000, 1),
                     "over_ms": {str(ms): int(total - delta.get(repr(ms / 1000), total)) for ms in PAUSE_THRESHOLDS_MS}}
    return out


def overload(stats: dict, stop_p95_ms: float) -> str | None:
    """Why a rate is clearly past what the server sustains, or None."""
    if stats["failed"]:
        return f"{stats['failed']} requests failed"
    if stats["rejected_429"] > 0.01 * stats["requests"]:
        return f"{stats['rejected_429']} of {stats['requests']} requests answered 429"
    audible = stats["first_audible_ms"]
    if audible and audible["p95"] > stop_p95_ms:
        return f"p95 first audible {audible['p95']} ms > {stop_p95_ms} ms"
    return None


@contextmanager
def server_process(args, folder: Path):
    """`qtts serve` in a subprocess on a free port; yields its URL and start-up seconds once /health says ready."""
    port = free_port()
    command = [sys.executable, "-m", "qtts.cli", "serve", "--model", str(folder), "--port", str(port),
               "--max-batch", str(args.max_batch), "--max-queue", str(args.max_queue), "--max-len", str(args.max_len),
               "--log-level", "warning"]
    command += ["--device", args.device] + (["--dtype", args.dtype] if args.dtype else [])
    command += ["--engine-process", args.engine_process]
    command += args.server_args.split()
    if args.switch_interval_us is not None:
        command += ["--switch-interval-us", str(args.switch_interval_us)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as scratch, open(Path(scratch, "server.log"), "w+") as log:
        process = subprocess.Popen(command + ["--voices-dir", scratch], stdout=log, stderr=subprocess.STDOUT,
                                   env=env, cwd=REPO)
        try:
            url = f"http://127.0.0.1:{port}"
            started = time.monotonic()
            deadline = started + args.startup_timeout
            while not _healthy(url):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise SystemExit(f"the server did not start:\n{log.read()[-4000:]}")
                time.sleep(0.05)
            yield url, round(time.monotonic() - started, 1)
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            keep_server_log(log, command)


def keep_server_log(log, command: list[str]) -> None:
    """Append the server's log (its last 200 kB) to $OUT/server_logs.txt, where a GPU session collects results."""
    if not os.environ.get("OUT"):
        return
    try:
        log.flush()
        tail = Path(log.name).read_bytes()[-200_000:].decode(errors="replace")
        with open(Path(os.environ["OUT"], "server_logs.txt"), "a") as kept:
            kept.write(f"=== {' '.join(command[3:])}\n{tail}\n")
    except OSError as error:  # a lost log must not hide the run's own outcome
        print(f"could not keep the server log: {error}", file=sys.stderr)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


async def voice_fields(client: httpx.AsyncClient) -> dict:
    """The body fields that pick a voice: the first built-in speaker, or a description for VoiceDesign."""
    health = (await client.get("/health")).json()
    if health["model_type"] == "voice_design":
        return {"voice": "designed", "instructions": "A calm, clear adult voice."}
    builtin = [v["id"] for v in (await client.get("/v1/voices")).json()["data"] if v["type"] == "builtin"]
    if not builtin:
        raise SystemExit("this benchmark needs a CustomVoice or VoiceDesign model (Base needs a stored clone voice)")
    return {"voice": builtin[0]}


async def warm_up(load: Load, max_batch: int) -> float:
    """One round of 1, 2, 4 ... max_batch concurrent requests (graphs for every batch bucket); its seconds."""
    started = time.perf_counter()
    clients = 1
    while True:
        outcomes = await asyncio.gather(*(load.speak(i, time.perf_counter()) for i in range(clients)))
        failed = [o for o in outcomes if not o.ok]
        if failed:
            raise SystemExit(f"warm-up request failed: {failed[0].status} {failed[0].error}")
        if clients == max_batch:
            return round(time.perf_counter() - started, 1)
        clients = min(2 * clients, max_batch)


def http_client(url: str, request_timeout: float) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    return httpx.AsyncClient(base_url=url, limits=limits, timeout=httpx.Timeout(request_timeout, connect=30))


def client_share(url: str, request_timeout: float, prompts: list[str], voice: dict, phase: str, level: float,
                 duration_s: float, seed: str, start_at: float) -> tuple[list[Outcome], float, int, float, dict]:
    """One client process's share of a level, started at wall-clock `start_at`: its outcomes, wall seconds, peak in
    flight, how late it sent anything, and its own event loop's lag histogram (scraped shape)."""
    async def share():
        async with http_client(url, request_timeout) as client:
            load = Load(client, prompts, voice)
            lag = DurationHistogram()
            watcher = asyncio.create_task(watch_loop_lag(lag))
            await asyncio.sleep(max(0.0, start_at - time.time()))
            if phase == "open_loop":
                outcomes, wall_s = await open_loop(load, level, duration_s, seed)
            else:
                outcomes, wall_s = await closed_loop(load, int(level), duration_s, seed)
            watcher.cancel()
            return outcomes, wall_s, load.peak_in_flight, load.client_lag_s, client_lag_scrape(lag)
    return asyncio.run(share())


class ClientProcesses:
    """A level's load split among processes, so that the client is not what saturates: an open-loop rate into
    independent Poisson streams of rate / N (together a Poisson stream of the rate), closed-loop clients into N
    groups. Outcomes are merged; peak in flight is the sum of the processes' peaks (an upper bound)."""

    def __init__(self, count: int, url: str, args, prompts: list[str], voice: dict):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.count, self.url, self.args, self.prompts, self.voice = count, url, args, prompts, voice
        self.pool = ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("spawn"))
        self.peak_in_flight, self.client_lag_s, self.lag = 0, 0.0, None

    def measure(self, phase: str, level: float) -> tuple[list[Outcome], float]:
        shares = ([level / self.count] * self.count if phase == "open_loop" else
                  [level // self.count + (i < level % self.count) for i in range(self.count)])
        start_at = time.time() + 1.0  # the processes start together
        futures = [self.pool.submit(client_share, self.url, self.args.request_timeout, self.prompts, self.voice,
                                    phase, share, self.args.duration, f"{self.args.seed}:{i}", start_at)
                   for i, share in enumerate(shares) if share > 0]
        done = [future.result() for future in futures]
        self.peak_in_flight = sum(peak for _, _, peak, _, _ in done)
        self.client_lag_s = max(lag for _, _, _, lag, _ in done)
        self.lag = merged_lag([histogram for *_, histogram in done])
        return [o for outcomes, *_ in done for o in outcomes], max(wall for _, wall, *_ in done)

    def close(self) -> None:
        self.pool.shutdown()


def merged_lag(scrapes: list[dict]) -> dict:
    """The processes' client_loop_lag histograms summed (the same buckets in each)."""
    total = {"buckets": {}, "sum": 0.0}
    for scrape in scrapes:
        histogram = scrape["client_loop_lag"]
        total["sum"] += histogram["sum"]
        for le, count in histogram["buckets"].items():
            total["buckets"][le] = total["buckets"].get(le, 0.0) + count
    return {"client_loop_lag": total}


async def sweep(args, url: str, result: dict, save) -> None:
    """Warm up, then the rate sweep and the concurrency sweep into `result`; `save(stats)` after each level."""
    async with http_client(url, args.request_timeout) as client:
        load = Load(client, make_prompts(seed=args.seed), await voice_fields(client))
        processes = (ClientProcesses(args.client_processes, url, args, load.prompts, load.voice)
                     if args.client_processes > 1 else None)
        # this client's own event-loop lag: a stall here delays pieces that left the server on time
        client_lag = DurationHistogram()
        watcher = asyncio.create_task(watch_loop_lag(client_lag))
        if args.cold_start:  # the server's first requests, sent the moment it said ready
            outcomes, wall_s = await open_loop(load, args.cold_rate, 0.0, args.seed, count=args.cold_requests)
            result["cold_start"] = {"rate": args.cold_rate, **summarize(outcomes, wall_s, load)}
            save(result["cold_start"])
        if args.client_warmup:
            result["warmup_s"] = await warm_up(load, args.max_batch)
        phases = [("open_loop", "rate", args.rates, open_loop, args.stop_p95_ms),
                  ("closed_loop", "concurrency", args.concurrency, closed_loop, float("inf"))]
        for phase, key, levels, measure, stop_p95_ms in phases:
            for level in levels:
                before, lag_before = await pause_histograms(client), client_lag_scrape(client_lag)
                if processes is None:
                    stats = {key: level, **summarize(*await measure(load, level, args.duration, args.seed), load)}
                    lag_after = client_lag_scrape(client_lag)
                else:  # the processes' own loops: this one only waits
                    measured = await asyncio.to_thread(processes.measure, phase, level)
                    stats = {key: level, **summarize(*measured, processes)}
                    lag_before, lag_after = merged_lag([]), processes.lag
                after = await pause_histograms(client)
                stats["pauses"] = pauses_between(before and {**before, **lag_before}, after and {**after, **lag_after})
                stats["overloaded"] = reason = overload(stats, stop_p95_ms)
                result[phase].append(stats)
                if reason and level != levels[-1]:
                    result[f"{phase}_stopped"] = {key: level, "reason": reason}
                save(stats)
                if reason:
                    break
        watcher.cancel()
        if processes is not None:
            processes.close()


def numbers(text: str, kind=float) -> list:
    return [kind(x) for x in text.split(",") if x.strip()]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="checkpoint folder (default: the fixture of --type/--size)")
    parser.add_argument("--size", default="1.7b", choices=("tiny", "tiny-0.6b", "0.6b", "1.7b"))
    parser.add_argument("--type", default="custom_voice", choices=("custom_voice", "voice_design"))
    parser.add_argument("--url", help="measure a server already running there instead of starting one")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-queue", type=int, default=256)
    parser.add_argument("--max-len", type=int, default=1024, help="prompt + frames per request (KV per row)")
    parser.add_argument("--switch-interval-us", type=float, default=None, help="the server's GIL switch interval")
    parser.add_argument("--engine-process", choices=("auto", "on", "off"), default="auto",
                        help="the server's engine in its own process (auto: on GPU)")
    parser.add_argument("--cold-start", action="store_true",
                        help="first, open-loop load at --cold-rate from the moment /health says ready")
    parser.add_argument("--cold-rate", type=float, default=10.0)
    parser.add_argument("--cold-requests", type=int, default=50, help="requests in the cold phase")
    parser.add_argument("--client-warmup", action="store_true",
                        help="send 1, 2, 4 ... max_batch requests before measuring (a user's server gets none)")
    parser.add_argument("--server-args", default="", help="more `qtts serve` flags, e.g. '--low-buffer-ms 50'")
    parser.add_argument("--client-processes", type=int, default=1,
                        help="split each level's load among this many client processes (the cold phase and the "
                             "warm-up stay in one)")
    parser.add_argument("--rates", type=numbers, default=numbers("1,2,4,8,10,16,20,30,40,60"), help="'' skips")
    parser.add_argument("--concurrency", type=lambda t: numbers(t, int), default=[1, 2, 4, 8, 16, 32, 64, 128],
                        help="closed-loop client counts; '' skips")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load per rate or concurrency")
    parser.add_argument("--stop-p95-ms", type=float, default=2000.0, help="rate sweep stops past this p95")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--request-timeout", type=float, default=120.0)
    parser.add_argument("--startup-timeout", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/serve_<size>_<device>.json")
    parser.add_argument("--smoke", action="store_true",
                        help="other defaults: tiny fixture on CPU, a few requests (a check, not numbers)")
    if "--smoke" in sys.argv:
        parser.set_defaults(size="tiny", device="cpu", max_batch=2, duration=2.0, rates=[1.0, 2.0],
                            concurrency=[1, 2], request_timeout=30.0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so a killed run still stops its server
    import torch

    from qtts.testing.fixtures import fixture_dir

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = args.device.startswith("cuda") and torch.cuda.is_available()
    device_name = torch.cuda.get_device_name(torch.device(args.device)) if gpu else "cpu"
    folder = args.model or fixture_dir(args.type, args.size)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    prompts = make_prompts(seed=args.seed)
    result = {"benchmark": "serve", "device": device_name, "torch": torch.__version__,
              "commit": commit + ("+dirty" if dirty else ""), "model": str(folder),
              "model_type": None if args.model else args.type, "size": None if args.model else args.size,
              "max_batch": args.max_batch, "max_queue": args.max_queue, "max_len": args.max_len,
              "switch_interval_us": args.switch_interval_us, "engine_process": args.engine_process,
              "server_args": args.server_args, "client_processes": args.client_processes,
              "command": " ".join(sys.argv),
              "duration_s": args.duration, "seed": args.seed, "smoke": args.smoke, "stop_p95_ms": args.stop_p95_ms,
              "audible_level_int16": AUDIBLE_LEVEL, "chars_per_second": CHARS_PER_SECOND,
              "prompts": {"count": len(prompts), "mean_chars": round(float(np.mean([len(p) for p in prompts])), 1),
                          "mean_audio_s": round(float(np.mean([frames_for(p) for p in prompts])) / FRAMES_PER_SECOND,
                                                2)},
              "open_loop": [], "open_loop_stopped": None, "closed_loop": [], "closed_loop_stopped": None}
    label = args.size if args.model is None else args.model.name
    out = args.out or REPO / "benchmarks" / "results" / f"serve_{label}_{device_name.replace(' ', '_')}.json"

    def save(line: dict | None = None) -> None:
        if line is not None:
            print(json.dumps(line), flush=True)
        save_results(result, out)

    run = asyncio.run
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        pass
    if args.url:
        run(sweep(args, args.url.rstrip("/"), result, save))
    else:
        with server_process(args, folder) as (url, startup_s):
            result["startup_s"] = startup_s
            run(sweep(args, url, result, save))
    save()
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()

"""`qtts serve`: load a checkpoint and serve it over HTTP and websockets with uvicorn."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

API_KEY_ENV = "QTTS_API_KEY"


def api_key_from(args: argparse.Namespace) -> str | None:
    """--api-key, else the contents of --api-key-file (surrounding whitespace dropped), else $QTTS_API_KEY
    (None: no key). A key given on the command line shows in `ps`; the file and the environment do not."""
    if args.api_key:
        return args.api_key
    if args.api_key_file is not None:
        try:
            key = Path(args.api_key_file).read_text().strip()
        except OSError as exc:
            raise SystemExit(f"cannot read --api-key-file: {exc}") from None
        if not key:
            raise SystemExit(f"--api-key-file {args.api_key_file} is empty")
        return key
    return os.environ.get(API_KEY_ENV) or None


def default_voices_dir() -> Path:
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "qtts" / "voices"


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `serve` subcommand to the `qtts` command's subparsers."""
    p = subparsers.add_parser("serve", help="serve the OpenAI-compatible speech API, a websocket and a demo page")
    p.add_argument("--model", required=True, help="checkpoint folder or hub id")
    p.add_argument("--model-name", default=None, help="the id /v1/models reports (default: the folder's name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="bf16, fp16 or fp32 (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on /v1 (visible in `ps`: prefer --api-key-file or "
                        f"${API_KEY_ENV}; none of the three: open)")
    p.add_argument("--api-key-file", type=Path, default=None, help="read the API key from this file")
    p.add_argument("--max-batch", type=int, default=32, help="streams generated together")
    p.add_argument("--max-queue", type=int, default=256, help="requests waiting beyond that before 429")
    p.add_argument("--max-len", type=int, default=4096, help="prompt + generated frames of one request")
    p.add_argument("--max-prefills-per-frame", type=int, default=4,
                   help="new requests prefilled between two frames (twice as many while every stream holds a second "
                        "of audio); fewer bound each frame's delay, more admit a busy server's queue sooner")
    p.add_argument("--low-buffer-ms", type=float, default=0,
                   help="one prefill per frame while a stream holds less audio than this, or has none yet "
                        "(default 0: no such limit; it cost more first-audio latency than it saved)")
    p.add_argument("--speculate-text", choices=("on", "off"), default="on",
                   help="text written as it is spoken: start on the first word before its tokens settle, "
                        "holding its audio until they do (on), or wait for them (off)")
    p.add_argument("--fp8-talker", action="store_true", help="FP8 weights in the talker's decoder layers (off: "
                   "see docs/quantization.md for its quality gates)")
    p.add_argument("--fp8-predictor", action="store_true", help="FP8 weights in the code predictor's decoder layers")
    p.add_argument("--kv-cache", choices=("int8", "int4"), default=None, help="store the talker's K/V quantized")
    p.add_argument("--prefix-cache-mb", type=float, default=256,
                   help="memory for the K/V of reused voice prompt prefixes (0: off)")
    p.add_argument("--engine-process", choices=("auto", "on", "off"), default="auto",
                   help="run the engine in its own process, away from the server's GIL (auto: on GPU)")
    p.add_argument("--switch-interval-us", type=float, default=50,
                   help="Python's GIL switch interval: how long the engine thread may wait for the server's")
    p.add_argument("--max-input-chars", type=int, default=4096, help="longest `input` accepted")
    p.add_argument("--max-upload-mb", type=float, default=20, help="largest voice reference upload")
    p.add_argument("--max-upload-seconds", type=float, default=60, help="longest voice reference")
    p.add_argument("--voices-dir", type=Path, default=None,
                   help=f"where clone voices are stored (default: {default_voices_dir()})")
    p.add_argument("--shutdown-grace-s", type=float, default=30,
                   help="on SIGTERM, how long streams in flight may go on before they are ended with an error")
    p.add_argument("--body-timeout-s", type=float, default=30,
                   help="a request body that sends nothing for this long is answered 408")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    scale = p.add_argument_group("many replicas on Ray Serve (pip install 'qtts[ray]'; see docs/deploy.md)")
    scale.add_argument("--replicas", type=int, default=None,
                       help="serve through Ray Serve with this many engine replicas (default: one server, no Ray)")
    scale.add_argument("--max-replicas", type=int, default=None,
                       help="autoscale between --replicas and this many on queue depth")
    scale.add_argument("--gpus-per-replica", type=float, default=None,
                       help="GPUs each replica takes; 0.5 puts two on one card (default: 1 with CUDA, else 0)")
    scale.add_argument("--drain-timeout-s", type=float, default=120,
                       help="how long a stopping replica lets its in-flight streams finish")
    return p


def run_serve(args: argparse.Namespace) -> None:
    """Load the model, build the app and serve until SIGTERM or Ctrl-C, then drain (see DrainingServer);
    with --replicas, hand over to Ray Serve (qtts.deploy) instead."""
    if args.replicas is not None:
        from ..deploy import run_replicas

        return run_replicas(args)
    started_at = time.perf_counter()
    from ..api import TTS, pick_device
    from .app import create_app
    from .serving import serve

    # The engine thread gives up the GIL in every torch call; each time, a busy event loop (many open
    # streams) may keep it for a whole switch interval (5 ms by default) before handing it back.
    sys.setswitchinterval(args.switch_interval_us * 1e-6)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = pick_device(args.device)
    engine_process = args.engine_process == "on" or (args.engine_process == "auto" and device.type == "cuda")
    # with an engine process, this one only builds requests and voices
    tts = TTS.from_pretrained(args.model, device=device, dtype=args.dtype, max_len=args.max_len,
                              prefix_cache_mb=args.prefix_cache_mb, generator=not engine_process,
                              fp8_talker=args.fp8_talker, fp8_predictor=args.fp8_predictor, kv_cache=args.kv_cache)
    serve(create_app(tts, server_settings(args, engine_process, started_at)), args.host, args.port, args.log_level)


def server_settings(args: argparse.Namespace, engine_process: bool, started_at: float | None = None):
    """The ServerSettings that the `qtts serve` flags ask for (started_at: when the command started)."""
    from .state import ServerSettings

    return ServerSettings(
        voices_dir=args.voices_dir or default_voices_dir(),
        model_name=args.model_name or Path(str(args.model)).name,
        api_key=api_key_from(args),
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_input_chars=args.max_input_chars,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_upload_seconds=args.max_upload_seconds,
        engine_process=engine_process,
        max_prefills_per_frame=args.max_prefills_per_frame,
        low_buffer_s=args.low_buffer_ms / 1000,
        speculate_text=args.speculate_text == "on",
        started_at=started_at,
        shutdown_grace_s=args.shutdown_grace_s,
        body_timeout_s=args.body_timeout_s,
    )

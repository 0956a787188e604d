"""`qtts speak | design | clone --input-file FILE --out-dir DIR`: many texts, one file each, resumable.

Each line of the input is a text, or a JSON object with `text` and optionally `speaker`, `instruct`,
`language`, `seed` and `out` (a file name in DIR; default: the line number, e.g. 00007.wav). Lines whose
file exists are skipped, so an interrupted run picks up where it stopped (files are written whole or
not at all). A bad line is reported with its number and the others still finish; the exit code is
then 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from ..engine.request import SpeechRequest
from ..errors import QttsError
from . import checks
from .output import write_whole
from .parser import MAX_SEED
from .speak import (check_voice_files, clone_voice, load_generator, load_planner, request_options, speech_parts,
                    warn_if_capped)

LINE_FIELDS = ("text", "speaker", "instruct", "language", "seed", "out")


@dataclass
class Job:
    """One line of the input file that still has to be spoken."""

    line: int
    out: Path
    request: SpeechRequest  # checked against the model


class LineError(QttsError):
    """A line of the input file that cannot be spoken."""


def read_lines(path: Path) -> list[tuple[int, dict]]:
    """(line number, fields) of every non-blank line; fields of a bad line are a LineError instead."""
    lines = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if raw.strip():
            lines.append((number, _fields(raw)))
    return lines


def _fields(raw: str) -> dict | LineError:
    if not raw.lstrip().startswith("{"):
        return {"text": raw}
    try:
        fields = json.loads(raw)
    except json.JSONDecodeError as exc:
        return LineError(f"not valid JSON ({exc.msg}, column {exc.colno})")
    if not isinstance(fields, dict):
        return LineError("a JSON line must be an object with a text")
    unknown = sorted(set(fields) - set(LINE_FIELDS))
    if unknown:
        return LineError(f"unknown field {', '.join(unknown)}; a line may have {', '.join(LINE_FIELDS)}")
    if not isinstance(fields.get("text"), str):
        return LineError("no text: a JSON line needs \"text\": \"...\"")
    return fields


def run(args: argparse.Namespace) -> int:
    """Check every line, load the model, speak what is not written yet; 2 when any line failed."""
    if args.out_dir is None:
        raise QttsError("--input-file needs --out-dir DIR for the files it writes")
    if args.out is not None or args.stream:
        raise QttsError("--out and --stream are for one text; with --input-file the files go to --out-dir")
    lines = read_lines(checks.input_file(args.input_file, "--input-file"))
    out_dir = checks.writable_folder(args.out_dir, create=True)
    check_voice_files(args)
    planner = load_planner(args)
    shared = request_options(args)
    if args.command == "clone":
        shared["voice"] = clone_voice(args, planner)
    jobs, bad_lines, skipped, taken = [], 0, 0, set()
    for number, fields in lines:
        try:
            job = _job(planner, shared, number, fields, out_dir, args.format, taken)
        except QttsError as exc:  # InvalidRequestError included
            _report(number, exc)
            bad_lines += 1
            continue
        if job.out.exists():
            skipped += 1
        else:
            jobs.append(job)
    failed = _speak(load_generator(args, planner), jobs) if jobs else 0
    print(f"{len(jobs) - failed} written, {skipped} already there, {bad_lines + failed} failed "
          f"(of {len(lines)} lines) in {out_dir}", file=sys.stderr)
    return 2 if bad_lines + failed else 0


def _job(planner, shared: dict, number: int, fields, out_dir: Path, fmt: str, taken: set) -> Job:
    if isinstance(fields, Exception):
        raise fields
    name = fields.get("out", f"{number:05d}.{fmt}")
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise LineError(f"out {name!r} must be a file name (the file goes to --out-dir)")
    out = checks.audio_output(out_dir / name)
    if out in taken:
        raise LineError(f"another line already writes {name}")
    taken.add(out)
    seed = fields.get("seed", shared["seed"])
    if seed is not None and (type(seed) is not int or not 0 <= seed <= MAX_SEED):
        raise LineError(f"seed {seed!r} must be an integer from 0 to {MAX_SEED}")
    options = {**shared, **{key: fields[key] for key in ("speaker", "instruct", "language") if key in fields}}
    request = planner.request(fields["text"], **{**options, "seed": seed})
    planner.split(request)  # a text that cannot fit max_len even in parts fails here, before the model loads
    return Job(line=number, out=out, request=request)


def _report(line: int, error: Exception) -> None:
    from tqdm import tqdm

    tqdm.write(f"qtts: error: line {line}: {error}", file=sys.stderr)


def _speak(tts, jobs: list[Job]) -> int:
    """Generate every job, writing each file as its request finishes; the number that failed."""
    from tqdm import tqdm

    failed, audio_s, started = 0, 0.0, time.perf_counter()
    with tqdm(total=len(jobs), desc="speaking", unit="text", file=sys.stderr) as bar, \
            closing(tts.generate_many([job.request for job in jobs], progress=False)) as results:
        for index, result in results:
            job = jobs[index]
            if isinstance(result, Exception):
                _report(job.line, result)
                failed += 1
            else:
                write_whole(job.out, result.samples, result.sample_rate)
                audio_s += result.duration_s
                warn_if_capped(speech_parts(result), f"line {job.line}: ")
            bar.set_postfix_str(f"{audio_s / max(time.perf_counter() - started, 1e-9):.2f} audio-s/s")
            bar.update()
    return failed

"""Stored clone voices: metadata in SQLite, each voice prompt in its own safetensors file.

Layout of the folder: `voices.sqlite3` and `<voice id>.safetensors`. A voice's file is written and
made durable (file and folder fsynced) before its row commits, so a crash never lists a voice
without a file. A crash between the two leaves a file no row lists: opening the store removes such
files. A listed voice whose file is missing or unreadable is marked damaged (listed with status
"damaged"; speaking with it fails naming it) until it is deleted.
"""
from __future__ import annotations

import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..voices import VoicePrompt

log = logging.getLogger("qtts.server")

_SCHEMA = """CREATE TABLE IF NOT EXISTS voices (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, name_key TEXT NOT NULL UNIQUE, created_at INTEGER NOT NULL,
    transcript TEXT, reference_seconds REAL NOT NULL)"""
_VOICE_ID = re.compile(r"voice_[0-9a-f]{16}")


@dataclass(frozen=True)
class VoiceRecord:
    """One stored voice as the API lists it."""

    id: str
    name: str
    created_at: int
    transcript: str | None
    reference_seconds: float
    damaged: str | None = None  # why its file cannot be used, if it cannot

    def to_json(self) -> dict:
        status = {"status": "damaged", "error": self.damaged} if self.damaged else {"status": "ready"}
        return {"id": self.id, "object": "voice", "name": self.name, "type": "clone",
                "created_at": self.created_at, "transcript": self.transcript,
                "icl": bool(self.transcript), "reference_seconds": round(self.reference_seconds, 3), **status}


class DuplicateVoiceError(ValueError):
    """A voice with this name is already stored."""


ORPHAN_AGE_S = 60.0  # a voice file with no row is left alone this long (another process may be adding it)


class DamagedVoiceError(RuntimeError):
    """A listed voice whose file is missing or cannot be read."""


class VoiceStore:
    """Thread-safe store of clone voices under one folder; survives restarts. Several processes (server
    replicas) may share the folder: SQLite's file locks order their writes, and each reads the database on
    every lookup, so a voice added or deleted by one is seen by all at once."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._prompts: dict[str, VoicePrompt] = {}
        self._damaged: dict[str, str] = {}  # voice id -> why its file cannot be used
        self._db = sqlite3.connect(str(self.folder / "voices.sqlite3"), check_same_thread=False)
        with self._lock, self._db:
            self._db.execute(_SCHEMA)
        self._reconcile()

    def add(self, name: str, prompt: VoicePrompt, reference_seconds: float) -> VoiceRecord:
        """Store a voice under a new id; raises DuplicateVoiceError if the name is taken."""
        record = VoiceRecord(id="voice_" + secrets.token_hex(8), name=name, created_at=int(time.time()),
                             transcript=prompt.reference_text, reference_seconds=reference_seconds)
        with self._lock:
            if self._find_locked(name) is not None:
                raise DuplicateVoiceError(f"a voice named {name!r} already exists; delete it or pick another name")
            path = self._path(record.id)
            partial = path.with_suffix(".partial")
            prompt.save(partial)
            _fsync(partial)
            partial.replace(path)
            _fsync(self.folder)  # the rename itself
            try:
                with self._db:
                    self._db.execute("INSERT INTO voices VALUES (?, ?, ?, ?, ?, ?)",
                                     (record.id, record.name, name.casefold(), record.created_at, record.transcript,
                                      record.reference_seconds))
            except sqlite3.IntegrityError:  # another process sharing the folder took the name meanwhile
                path.unlink(missing_ok=True)
                raise DuplicateVoiceError(f"a voice named {name!r} already exists; delete it or pick another name")
            self._prompts[record.id] = prompt
        return record

    def list(self) -> list[VoiceRecord]:
        with self._lock:
            rows = self._db.execute("SELECT id, name, created_at, transcript, reference_seconds FROM voices "
                                    "ORDER BY created_at, name").fetchall()
            return [self._record(row) for row in rows]

    def find(self, id_or_name: str) -> VoiceRecord | None:
        """The voice with this id, or else with this name (case-insensitive)."""
        with self._lock:
            return self._find_locked(id_or_name)

    def prompt(self, voice_id: str) -> VoicePrompt:
        """The voice prompt of a stored voice (read once, then cached); raises DamagedVoiceError, and
        marks the voice damaged, if its file is missing or unreadable."""
        with self._lock:
            if voice_id not in self._prompts:
                path = self._path(voice_id)
                try:
                    self._prompts[voice_id] = VoicePrompt.load(path)
                except Exception as exc:  # missing, truncated, emptied: VoicePrompt.load says which
                    reason = "its file is missing" if not path.exists() else "its file cannot be read"
                    self._damaged[voice_id] = reason
                    log.error("voice %s is damaged: %s (%s)", voice_id, reason, exc)
                    raise DamagedVoiceError(reason) from exc
                self._damaged.pop(voice_id, None)
            return self._prompts[voice_id]

    def delete(self, voice_id: str) -> bool:
        """Remove a voice; False if there was none with this id."""
        with self._lock:
            with self._db:
                removed = self._db.execute("DELETE FROM voices WHERE id = ?", (voice_id,)).rowcount
            if removed:
                self._prompts.pop(voice_id, None)
                self._damaged.pop(voice_id, None)
                self._path(voice_id).unlink(missing_ok=True)
        return removed > 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _find_locked(self, id_or_name: str) -> VoiceRecord | None:
        row = self._db.execute("SELECT id, name, created_at, transcript, reference_seconds FROM voices "
                               "WHERE id = ? OR name_key = ? ORDER BY id = ? DESC LIMIT 1",
                               (id_or_name, id_or_name.casefold(), id_or_name)).fetchone()
        return self._record(row) if row else None

    def _record(self, row: tuple) -> VoiceRecord:
        return VoiceRecord(*row, damaged=self._damaged.get(row[0]))

    def _reconcile(self) -> None:
        """Remove files no row lists (a crash between writing a voice's file and committing its row)
        and mark rows whose file is missing as damaged. Files younger than ORPHAN_AGE_S stay: another
        process sharing the folder (a replica) may be between writing one and committing its row."""
        with self._lock:
            listed = {voice_id for (voice_id,) in self._db.execute("SELECT id FROM voices")}
            for path in [*self.folder.glob("voice_*.safetensors"), *self.folder.glob("voice_*.partial")]:
                if time.time() - path.stat().st_mtime < ORPHAN_AGE_S:
                    continue
                if path.suffix == ".partial" or path.stem not in listed:
                    log.warning("removing %s: no stored voice lists it (left by an interrupted upload)", path)
                    path.unlink(missing_ok=True)
            for voice_id in sorted(listed):
                if not self._path(voice_id).is_file():
                    log.warning("voice %s is listed but its file %s is missing", voice_id, self._path(voice_id))
                    self._damaged[voice_id] = "its file is missing"

    def _path(self, voice_id: str) -> Path:
        if not _VOICE_ID.fullmatch(voice_id):
            raise KeyError(f"not a voice id: {voice_id!r}")
        return self.folder / f"{voice_id}.safetensors"


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

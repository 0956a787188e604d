import os
import sqlite3
import time
from pathlib import Path

import pytest
import torch

from qtts.server.voices_store import DamagedVoiceError, DuplicateVoiceError, VoiceStore
from qtts.voices import VoicePrompt


def prompt(icl=True):
    codes = torch.arange(32).reshape(2, 16) if icl else None
    return VoicePrompt(torch.linspace(-1, 1, 8), codes, "hello there" if icl else None)


def test_voices_survive_a_restart(tmp_path):
    store = VoiceStore(tmp_path)
    record = store.add("Alice", prompt(), reference_seconds=3.0)
    store.add("Bob", prompt(icl=False), reference_seconds=2.0)
    store.close()

    reopened = VoiceStore(tmp_path)
    assert [r.name for r in reopened.list()] == ["Alice", "Bob"]
    assert reopened.find("alice") == record and reopened.find(record.id) == record
    loaded = reopened.prompt(record.id)
    assert torch.equal(loaded.speaker_embedding, prompt().speaker_embedding)
    assert torch.equal(loaded.reference_codes, prompt().reference_codes) and loaded.reference_text == "hello there"
    assert record.to_json()["icl"] is True


def test_names_are_unique_and_delete_removes_the_file(tmp_path):
    store = VoiceStore(tmp_path)
    record = store.add("Alice", prompt(), 1.0)
    with pytest.raises(DuplicateVoiceError):
        store.add("ALICE", prompt(), 1.0)
    assert store.delete(record.id)
    assert not store.delete(record.id)
    assert store.find("Alice") is None
    assert list(tmp_path.glob("*.safetensors")) == []


def test_ids_that_are_not_voice_ids_touch_no_files(tmp_path):
    store = VoiceStore(tmp_path)
    (tmp_path / "keep.safetensors").write_bytes(b"x")
    assert store.find("../keep") is None
    assert not store.delete("../keep")
    assert (tmp_path / "keep.safetensors").exists()


def test_files_no_row_lists_are_removed_on_opening(tmp_path):
    store = VoiceStore(tmp_path)
    kept = store.add("Alice", prompt(), 1.0)
    store.close()
    orphan = tmp_path / "voice_0123456789abcdef.safetensors"  # a kill between the file and its row
    orphan.write_bytes((tmp_path / f"{kept.id}.safetensors").read_bytes())
    partial = tmp_path / "voice_fedcba9876543210.partial"  # a kill while writing the file
    partial.write_bytes(b"half a voice")
    fresh = tmp_path / "voice_00000000000000aa.safetensors"  # another replica may be adding this one now
    fresh.write_bytes(orphan.read_bytes())
    old = time.time() - 3600
    for path in (orphan, partial):
        os.utime(path, (old, old))
    reopened = VoiceStore(tmp_path)
    assert not orphan.exists() and not partial.exists() and fresh.exists()
    assert [r.id for r in reopened.list()] == [kept.id] and reopened.prompt(kept.id).reference_text == "hello there"


@pytest.mark.parametrize("damage", ["delete", "empty", "truncate"])
def test_a_voice_whose_file_is_damaged_is_marked_and_named(tmp_path, damage):
    store = VoiceStore(tmp_path)
    record = store.add("Alice", prompt(), 1.0)
    store.close()
    path = tmp_path / f"{record.id}.safetensors"
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes(b"" if damage == "empty" else path.read_bytes()[:50])
    reopened = VoiceStore(tmp_path)
    with pytest.raises(DamagedVoiceError, match="missing" if damage == "delete" else "cannot be read"):
        reopened.prompt(record.id)
    listed = reopened.find("Alice").to_json()
    assert listed["status"] == "damaged" and listed["error"]
    assert reopened.delete(record.id) and reopened.list() == []


def test_a_voice_file_is_durable_before_its_row_commits(tmp_path, monkeypatch):
    fsynced = []
    fsync = os.fsync

    def watched(fd):
        rows = sqlite3.connect(tmp_path / "voices.sqlite3").execute("SELECT COUNT(*) FROM voices").fetchone()[0]
        fsynced.append((Path(os.readlink(f"/proc/self/fd/{fd}")).name, rows))
        fsync(fd)

    store = VoiceStore(tmp_path)
    monkeypatch.setattr(os, "fsync", watched)
    record = store.add("Alice", prompt(), 1.0)
    assert fsynced == [(f"{record.id}.partial", 0), (tmp_path.name, 0)]  # the file, then the folder's rename
    assert [r.id for r in store.list()] == [record.id]
def test_stores_sharing_a_folder_see_each_others_voices_and_names(tmp_path, monkeypatch):
    first, second = VoiceStore(tmp_path), VoiceStore(tmp_path)  # e.g. two server replicas
    record = first.add("Alice", prompt(), 1.0)
    assert second.find("alice") == record
    assert torch.equal(second.prompt(record.id).reference_codes, prompt().reference_codes)
    # both check the name before either writes: the database refuses the second, and its file goes
    monkeypatch.setattr(second, "_find_locked", lambda name: None)
    with pytest.raises(DuplicateVoiceError):
        second.add("ALICE", prompt(), 1.0)
    assert sorted(p.name for p in tmp_path.glob("voice_*")) == [f"{record.id}.safetensors"]
    assert first.delete(record.id) and second.find(record.id) is None

import pytest
import torch

from qtts.server.voices_store import DuplicateVoiceError, VoiceStore
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

"""Which checkpoint folders load: the hub layout, and what `transformers` saves for a fine-tuned model."""
import shutil

import pytest

from qtts.checkpoint import resolve_checkpoint
from qtts.errors import CheckpointError
from qtts.text import TextTokenizer, assistant_template

BPE_FILES = ("vocab.json", "merges.txt")


def _copy_without(folder, target, names):
    shutil.copytree(folder, target, ignore=lambda _, entries: [e for e in entries if e in names])
    return target


def test_a_folder_without_any_tokenizer_is_refused_by_name(tiny_custom_voice, tmp_path):
    folder = _copy_without(tiny_custom_voice, tmp_path / "model", BPE_FILES)
    with pytest.raises(CheckpointError, match=r"tokenizer\.json \(or vocab\.json \+ merges\.txt\)"):
        resolve_checkpoint(folder)


@pytest.mark.oracle
def test_a_tokenizer_saved_by_transformers_loads_and_encodes_as_upstream(tiny_custom_voice, tmp_path):
    from tests.oracle import require_oracle

    require_oracle()
    from transformers import AutoProcessor

    folder = _copy_without(tiny_custom_voice, tmp_path / "model", BPE_FILES + ("tokenizer_config.json",))
    AutoProcessor.from_pretrained(str(tiny_custom_voice), fix_mistral_regex=True).save_pretrained(str(folder))
    assert not any((folder / name).exists() for name in BPE_FILES)
    assert (folder / "tokenizer.json").is_file()
    upstream = AutoProcessor.from_pretrained(str(folder), fix_mistral_regex=True)
    ours = TextTokenizer.from_folder(resolve_checkpoint(folder))
    for text in ("Hello there, this is a test.", "你好，世界！", "It's 12345, don't.", "tabs\tand\r\nCRLF"):
        prompt = assistant_template(text)
        assert ours.encode(prompt) == upstream(text=prompt)["input_ids"], text

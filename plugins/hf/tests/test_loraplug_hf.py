"""loraplug-hf: the Hugging Face half of the plugin toolkit."""

from __future__ import annotations

import subprocess
import sys

import pytest

import loraplug_hf


def test_byte_level_tokenizer_encodes_any_text_and_its_specials() -> None:
    tokenizer = loraplug_hf.byte_level_tokenizer(("<pad>", "<s>", "</s>", "<|user|>"), chat_template=None)
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    ids = tokenizer("héllo ✓<|user|>")["input_ids"]
    assert ids[-1] == 3 and tokenizer.decode(ids) == "héllo ✓<|user|>"


@pytest.mark.parametrize("debug", ["", "1"])
def test_quiet_libraries_turns_transformers_logging_to_errors_unless_debugging(debug: str) -> None:
    # A fresh process: transformers' verbosity is process-wide state, and the call is cached.
    code = (
        "import loraplug_hf; loraplug_hf.quiet_libraries('transformers');"
        "from transformers.utils import logging; import logging as std;"
        "print(logging.get_verbosity() == std.ERROR, logging.is_progress_bar_enabled())"
    )
    env = {"LORAPLUG_DEBUG": debug, "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert out.split() == (["True", "False"] if not debug else ["False", "True"])


def test_importing_it_imports_no_modality_library() -> None:
    code = "import sys, loraplug_hf; print(sorted(m for m in ('torch', 'transformers', 'diffusers', 'tokenizers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_attach_peft_names_the_models_modules_when_the_targets_match_none() -> None:
    import torch
    from peft import LoraConfig

    from loraplug import LoraplugError

    model = torch.nn.Sequential()
    model.add_module("encoder", torch.nn.Linear(4, 4))
    with pytest.raises(LoraplugError) as caught:
        loraplug_hf.attach_peft(model, LoraConfig(target_modules=["q_proj"]), what="LoHa")
    assert (
        caught.value.what.startswith("LoHa could not be attached")
        and caught.value.where == "adapter.target_modules"
    )
    assert "encoder" in (caught.value.fix or "")
    attached = loraplug_hf.attach_peft(model, LoraConfig(target_modules=["encoder"]))
    assert any("lora_A" in name for name, _ in attached.named_parameters())


def test_classifier_rows_are_right_padded_and_example_inputs_pad_only_where_masked() -> None:
    import torch

    from loraplug_hf.classifier import pad_right, token_inputs

    ids, mask = pad_right([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    inputs = token_inputs(4, 1, (3, 50), torch.Generator().manual_seed(0), padded=5)
    real = inputs["attention_mask"] == 1
    # A decoder classifier finds a text's end by the pad id: it may appear only in the padding.
    assert not bool((inputs["input_ids"][real] == 1).any())
    assert inputs["input_ids"][0, -5:].tolist() == [1] * 5 and inputs["attention_mask"][0, -5:].sum() == 0

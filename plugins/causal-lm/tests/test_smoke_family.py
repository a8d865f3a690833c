"""`--smoke` in the recipe's own family: where the model's config and tokenizer are on this machine (a
local directory, or the Hugging Face cache) the smoke run trains a shrunk random model of that architecture
with the recipe's own target_modules and the model's tokenizer and chat template; elsewhere it falls back
to tiny-llama and says so.

Each family's directory holds only a config (transformers' default sizes: billions of parameters, never
built) and a byte-level tokenizer with a chat template of its own — no weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loraplug.testing import run_cli

#: transformers' model_type of each family, and a module name of its own that all-linear adapts.
FAMILIES = {
    "llama": "q_proj",
    "mistral": "q_proj",
    "mixtral": "q_proj",
    "qwen2": "q_proj",
    "qwen3": "q_proj",
    "gemma2": "q_proj",
    "gemma3_text": "q_proj",
    "phi3": "qkv_proj",
    "gpt2": "c_attn",
    "gpt_neox": "query_key_value",
    "opt": "fc1",
    "falcon": "query_key_value",
    "bloom": "query_key_value",
}


def family_template(family: str) -> str:
    return (
        f"{{% for m in messages %}}[{family}:{{{{ m['role'] }}}}]{{{{ m['content'] }}}}</s>{{% endfor %}}"
        f"{{% if add_generation_prompt %}}[{family}:assistant]{{% endif %}}"
    )


def config_and_tokenizer(family: str, directory: Path) -> Path:
    """``family``'s default config (its real sizes) and a tokenizer with a chat template of its own, saved
    in ``directory`` as a downloaded model's are, without weights."""
    from transformers import AutoConfig

    from loraplug_hf import byte_level_tokenizer

    tokenizer = byte_level_tokenizer(chat_template=family_template(family))
    ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    AutoConfig.for_model(family, vocab_size=len(tokenizer), **ids).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def smoke_recipe(lm_recipe: Any, pretrained: str, **adapter: Any) -> Path:
    return lm_recipe(
        model={"pretrained": pretrained},
        adapter=adapter,
        data={"val_fraction": 0.0},
        eval={"sample_prompts": []},
        export=[],
    )


@pytest.mark.slow  # 13 short runs: about 10 s each on a shared CPU
@pytest.mark.parametrize("family", FAMILIES)
def test_smoke_trains_a_shrunk_model_of_the_recipes_own_family(
    family: str, tmp_path: Path, lm_recipe: Any
) -> None:
    from safetensors import safe_open

    source = config_and_tokenizer(family, tmp_path / f"my-{family}")
    result = run_cli("run", smoke_recipe(lm_recipe, str(source)), "--smoke")
    assert result.exit_code == 0, result.output
    assert f"a shrunk random {family}, 2 layers, hidden 64 built from the config of {source}" in result.stdout
    run_dir = tmp_path / "runs" / "smoke" / "tiny"
    assert "shrink = true" in (run_dir / "recipe.toml").read_text()
    with safe_open(str(run_dir / "adapter" / "adapter.safetensors"), "pt") as adapter:
        names = list(adapter.keys())
    assert any(f".{FAMILIES[family]}." in name for name in names), names  # the family's own modules


def test_the_shrunk_model_keeps_the_real_tokenizer_and_chat_template(tmp_path: Path) -> None:
    import os

    from transformers import AutoTokenizer

    from loraplug_causal_lm.smoke import shrunk_dir

    source = config_and_tokenizer("qwen2", tmp_path / "my-qwen2")
    built = shrunk_dir(str(source), None, False, Path(os.environ["LORAPLUG_CACHE"]))
    tokenizer = AutoTokenizer.from_pretrained(built)
    assert tokenizer.chat_template == family_template("qwen2")
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert rendered == "[qwen2:user]hi</s>"


def test_a_target_module_the_family_lacks_now_fails_in_smoke(tmp_path: Path, lm_recipe: Any) -> None:
    """LLaMA's names on a GPT-2 recipe passed --smoke when it always ran tiny-llama."""
    source = config_and_tokenizer("gpt2", tmp_path / "my-gpt2")
    result = run_cli(
        "run", smoke_recipe(lm_recipe, str(source), target_modules=["q_proj", "v_proj"]), "--smoke"
    )
    assert result.exit_code == 2
    assert "adapter.target_modules" in result.stderr and "c_attn" in result.stderr
    assert "Traceback" not in result.output


def test_a_hub_id_in_the_hugging_face_cache_is_shrunk_offline(
    tmp_path: Path, lm_recipe: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-phi"
    config_and_tokenizer("phi3", repo / "snapshots" / "0123abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    result = run_cli("run", smoke_recipe(lm_recipe, "acme/tiny-phi"), "--smoke")
    assert result.exit_code == 0, result.output
    assert "a shrunk random phi3, 2 layers, hidden 64 built from the config of acme/tiny-phi" in result.stdout


def test_a_model_not_on_this_machine_falls_back_to_tiny_llama_and_says_so(lm_recipe: Any) -> None:
    result = run_cli("run", smoke_recipe(lm_recipe, "no-such-org/no-such-model"), "--smoke")
    assert result.exit_code == 0, result.output
    warning = " ".join(result.stderr.split())
    assert (
        "warning: --smoke: the config and tokenizer of 'no-such-org/no-such-model' are not on this machine"
        in warning
    )
    assert "uses the tiny-llama preset instead" in warning
    check = run_cli("recipe", "check", smoke_recipe(lm_recipe, "no-such-org/no-such-model"), "--smoke")
    assert check.exit_code == 0 and "uses the tiny-llama preset instead" in " ".join(check.stderr.split())


def test_shrinking_keeps_the_kind_of_attention_and_cuts_per_layer_lists() -> None:
    from loraplug_causal_lm.smoke import shrink_config

    grouped = shrink_config(
        {
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "layer_types": ["a", "b"] * 16,
        }
    )
    assert (grouped["num_key_value_heads"], grouped["layer_types"]) == (2, ["a", "b"])
    assert shrink_config({"num_attention_heads": 32, "num_key_value_heads": 32})["num_key_value_heads"] == 4
    assert shrink_config({"num_attention_heads": 71, "num_kv_heads": 1})["num_kv_heads"] == 1
    experts = shrink_config({"num_local_experts": 8, "num_experts_per_tok": 2, "model_type": "mixtral"})
    assert experts == {"num_local_experts": 4, "num_experts_per_tok": 2, "model_type": "mixtral"}
    multimodal = shrink_config(
        {"model_type": "gemma3", "vision_config": {"model_type": "siglip", "hidden_size": 1152}}
    )
    assert multimodal["vision_config"] == {"model_type": "siglip", "hidden_size": 64}

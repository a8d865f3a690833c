"""The Hugging Face half of loraplug's plugin toolkit: what plugins built on transformers/diffusers share.

The core (``loraplug``, ``loraplug.toolkit``) never imports a modality library, not even inside a
function; the two helpers that must are here, in a library that plugins depend on. It is not a plugin:
it has no entry point and serves no kinds, so "no plugin imports another plugin" still holds for the
plugins that import it. Importing this module imports neither transformers nor diffusers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from loraplug import LoraplugError, toolkit

__all__ = ["attach_peft", "byte_level_tokenizer", "quiet_libraries", "save_seeded", "save_tiny_llama"]


def byte_level_tokenizer(
    specials: Sequence[str] = ("<pad>", "<s>", "</s>"),
    *,
    bos: str | None = "<s>",
    eos: str | None = "</s>",
    pad: str | None = "<pad>",
    chat_template: str | None = None,
) -> Any:
    """A tokenizer for a tiny preset: one token per byte, plus ``specials`` (ids 0, 1, … in order), no merges.

    It needs no training data or download and encodes any text, so a preset built with it loads with
    ``AutoTokenizer`` like a real checkpoint's. Returns a transformers ``PreTrainedTokenizerFast``; save
    it beside the model with ``save_pretrained``. Imports tokenizers and transformers on call.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(specials)}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(char, len(vocab))
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(specials))
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=bos, eos_token=eos, pad_token=pad, chat_template=chat_template
    )


@cache
def quiet_libraries(*libraries: str, loggers: tuple[str, ...] = ()) -> None:
    """:func:`loraplug.toolkit.quiet_libraries`, plus transformers' and diffusers' own switches.

    Those two keep their progress bars and log level in their own state, not in Python's warnings and
    logging configuration, so for each of them named in ``libraries`` their progress bars go off and
    their verbosity goes to errors. Call it before importing them, in every function that does; nothing
    is silenced while debugging (``LORAPLUG_DEBUG=1``). Imports transformers/diffusers only when named.
    """
    toolkit.quiet_libraries(*libraries, loggers=loggers)
    if toolkit.debugging():
        return
    if "transformers" in libraries:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    if "diffusers" in libraries:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        diffusers_logging.set_verbosity_error()


def save_seeded(make: Callable[[], Any], tokenizer: Any, seed: int, target: Path) -> None:
    """The model ``make()`` builds with torch seeded to ``seed`` (random but the same on every machine;
    the caller's random state is left as it was), saved with ``tokenizer`` to ``target``: a tiny preset."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make()
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def save_tiny_llama(model_class: Any, tokenizer: Any, preset: Mapping[str, Any], target: Path) -> None:
    """A LLaMA ``model_class`` (``LlamaForCausalLM``, ``LlamaForSequenceClassification``…) of a preset's
    settings (its ``seed`` and ``version`` aside) over ``tokenizer``'s vocabulary and special tokens,
    built seeded with ``preset["seed"]`` and saved with the tokenizer (:func:`save_seeded`)."""
    from functools import partial

    from transformers import LlamaConfig

    settings = {k: v for k, v in preset.items() if k not in ("seed", "version")}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **settings,
    )
    save_seeded(partial(model_class, config), tokenizer, preset["seed"], target)


def attach_peft(module: Any, config: Any, *, what: str = "LoRA") -> Any:
    """``peft.get_peft_model(module, config)``, or the error a user can act on when the config's
    ``target_modules`` name nothing in the model: the module names it does have.

    :param what: the adapter, as the error names it ("LoRA", "LoHa"…).
    """
    from peft import get_peft_model

    try:
        return get_peft_model(module, config)
    except ValueError as exc:
        names = sorted({name.rsplit(".", 1)[-1] for name, _ in module.named_modules() if name})
        raise LoraplugError(
            f"{what} could not be attached: {str(exc).splitlines()[0]}",
            where="adapter.target_modules",
            fix=f'Name modules this model has, or use "all-linear". Its module names include: {", ".join(names[:30])}',
        ) from exc

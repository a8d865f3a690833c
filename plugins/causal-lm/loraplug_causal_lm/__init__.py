"""loraplug-causal-lm: LoRA for causal language models.

Serves data kind ``jsonl``, model kind ``causal-lm`` (with the ``tiny-llama`` preset), adapter kind
``lora`` and export kinds ``peft`` and ``merged``. The hooks live in :mod:`.plugin`; everything heavy
(torch, transformers, peft) is imported inside them.
"""

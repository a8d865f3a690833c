"""loraplug-causal-lm: LoRA (and LoHa, LoKr) for causal language models.

Serves data kind ``jsonl``, model kind ``causal-lm`` (with the ``tiny-llama`` preset), adapter kinds
``lora``, ``loha`` and ``lokr`` (peft's), and export kinds ``peft`` and ``merged`` (for all three). The hooks live in :mod:`.plugin`; everything heavy
(torch, transformers, peft) is imported inside them.
"""

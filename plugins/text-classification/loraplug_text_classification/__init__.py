"""loraplug-text-classification: a sequence classifier on any causal-LM architecture, trained with LoRA.

    [data]                         [model]
    kind = "labelled-jsonl"        kind = "sequence-classifier"
    path = "reviews.jsonl"         pretrained = "tiny-llama-classifier"
    val_fraction = 0.2             labels = ["negative", "positive"]   # or read from the data

The hooks are in :mod:`loraplug_text_classification.plugin` (the entry point); heavy libraries are
imported by the modules the hooks import when called.
"""

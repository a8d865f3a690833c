"""loraplug-caption: the ``caption`` kinds ``wd14`` (an ONNX tagger) and ``blip`` (a transformers captioner)."""

"""loraplug-quant: the merged causal LM, quantized for deployment and reloadable with ``from_pretrained``.

Serves export kinds ``bnb-8bit`` and ``bnb-4bit`` (bitsandbytes) and ``int8`` (torchao weight-only),
for model kind ``causal-lm``. Each export reports its size against the unquantized model, the logit
drift and the perplexity change on the run's validation split. Heavy imports happen inside the hook.
"""

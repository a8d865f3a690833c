"""loraplug-quant: the run's merged model, quantized for deployment.

Serves export kinds ``bnb-8bit`` and ``bnb-4bit`` (bitsandbytes, for models saved with
``save_pretrained``: reloadable with ``from_pretrained``) and ``int8`` (torchao weight-only, for any
model kind). It imports no model plugin: the model's plugin hands over the merged module
(``loraplug_deployable``). Each export reports its size against the unquantized model, the output
drift and the change of the model's own scores on the run's validation split. Heavy imports happen
inside the hook.
"""

"""The text classifier as exporters see it (:class:`loraplug.Deployable`): the merged model, token inputs, logits.

This is all a model kind writes to be exported by ``onnx`` and ``int8`` (and, being a transformers
model saved with ``save_pretrained``, ``bnb-8bit`` / ``bnb-4bit``): those plugins never import this one.
The view — the LoRA merged into a float32 copy with the trained head, token inputs with a padded row,
the logits, the config and tokenizer saved beside — is what every decoder classifier shares, from the
``loraplug-hf`` library (``loraplug_hf.classifier``). Imported by the ``loraplug_deployable`` hook body only.
"""

from __future__ import annotations

from loraplug import Deployable, ModelBundle, RunContext
from loraplug_hf.classifier import classifier_deployable

#: transformers model types whose traced ONNX export the example's tests check (the tiny-classifier
#: preset is a LLaMA); another family is exported only when the onnx export says ``any_family = true``.
VERIFIED_FAMILIES = ("llama",)


def deployable(model: ModelBundle, ctx: RunContext) -> Deployable:
    """``loraplug_deployable`` of the text-classifier model kind."""
    return classifier_deployable(
        model.module, model.components["tokenizer"], seed=ctx.seed, verified_families=VERIFIED_FAMILIES
    )

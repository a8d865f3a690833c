"""The sequence classifier as exporters see it (:class:`loraplug.Deployable`): the merged model, token inputs, logits.

The ``merged`` export and the modality-neutral ``onnx``, ``int8`` and ``bnb-*`` exports all take the
model from here; none of those plugins imports this one. The view itself is what every decoder
classifier shares (``loraplug_hf.classifier``). Imported by hook bodies only (it imports torch).
"""

from __future__ import annotations

from loraplug import Deployable, ModelBundle, RunContext
from loraplug_hf import quiet_libraries
from loraplug_hf.classifier import classifier_deployable
from loraplug_text_classification.presets import LIBRARIES

#: Model types whose traced (ONNX) export this plugin's tests check; another family exports when the
#: onnx export says ``any_family = true`` (its parity check still guards the result).
VERIFIED_FAMILIES = ("llama", "gpt2")


def deployable(model: ModelBundle, ctx: RunContext) -> Deployable:
    """``loraplug_deployable`` of the sequence-classifier model kind."""
    quiet_libraries(*LIBRARIES)
    return classifier_deployable(
        model.module,
        model.components["tokenizer"],
        seed=ctx.seed,
        verified_families=VERIFIED_FAMILIES,
        what="sequence classifier",
    )

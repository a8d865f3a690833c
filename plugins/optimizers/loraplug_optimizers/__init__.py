"""loraplug-optimizers: more optimizer kinds for ``train.optimizer``, each with its own ``[optimizer]`` table.

* ``adamw8bit`` — bitsandbytes' AdamW with 8-bit state: about a quarter of AdamW's optimizer memory.
* ``lion`` — Lion (lion-pytorch): sign updates, one moving average; lr 3–10× below AdamW's.
* ``prodigy`` — Prodigy (prodigyopt): estimates the step size itself, so ``train.lr`` is a
  multiplier of that estimate and stays at about 1.0.
* ``adafactor`` — transformers' Adafactor: factored second moments, the smallest state of all.

The core decides which parameters train, their lr and weight decay (the parameter groups the hook
receives), the schedule, checkpoints and resume; these kinds only construct the optimizer. Heavy
libraries are imported inside the hook, and only for the kind the recipe names.
"""

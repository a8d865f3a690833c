"""loraplug-wandb: a metric sink that logs loraplug runs to Weights & Biases.

Off unless ``LORAPLUG_WANDB=1``; wandb's own variables (``WANDB_PROJECT``, ``WANDB_ENTITY``,
``WANDB_MODE``, ``WANDB_DIR``…) say where the run goes. See docs/runs.md.
"""

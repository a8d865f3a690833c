"""loraplug-onnx: the run's merged model as ONNX, checked against onnxruntime before it is kept.

Serves export kind ``onnx`` for every model kind whose plugin hands exporters a deployable model
(``loraplug_deployable``: ``causal-lm`` gives ``input_ids``, ``attention_mask`` → ``logits``;
``stable-diffusion`` its UNet: ``sample``, ``timestep``, ``encoder_hidden_states`` → ``noise_pred``).
It imports no model plugin. The exporter is ``torch.onnx.export(dynamo=True)``; see docs/formats.md
for why, and for what is written. Heavy imports happen inside the hook.
"""

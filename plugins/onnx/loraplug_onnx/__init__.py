"""loraplug-onnx: the merged model as ONNX, checked against onnxruntime before it is kept.

Serves export kind ``onnx`` for model kinds ``causal-lm`` (the merged LM: ``input_ids``,
``attention_mask`` → ``logits``) and ``stable-diffusion`` (the merged UNet: ``sample``, ``timestep``,
``encoder_hidden_states`` → ``noise_pred``). The exporter is ``torch.onnx.export(dynamo=True)``; see
docs/formats.md for why, and for what is written. Heavy imports happen inside the hook.
"""

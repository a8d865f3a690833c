"""loraplug-diffusion: LoRA (and LoCon, LoHa, LoKr) for Stable Diffusion 1.x / 2.x.

Serves data kind ``imagefolder``, model kind ``stable-diffusion`` (with the ``tiny-sd`` preset), adapter kinds
``lora``, ``loha`` and ``lokr`` and export kinds ``diffusers`` (LoRA only), ``kohya`` and ``merged``. The hooks live in :mod:`.plugin`;
everything heavy (torch, diffusers, transformers, peft) is imported inside them.

The ``stable-diffusion`` ModelBundle — what other plugins (an ONNX exporter, a quantizer) may rely on:

* ``kind`` is ``"stable-diffusion"``; ``base`` is the recipe's ``pretrained`` and ``base_dir`` its local
  directory (a diffusers pipeline: ``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``,
  ``tokenizer/``, ``scheduler/``) when there is one.
* ``components["unet"]`` is a diffusers ``UNet2DConditionModel``. After ``wrap_adapter`` it carries the
  adapter (LoRA, LoHa or LoKr) injected through peft under the adapter name ``"default"`` (diffusers'
  ``add_adapter``), so ``peft.get_peft_model_state_dict(unet)`` returns its weights, every adapted layer
  is a peft ``BaseTunerLayer`` (``merge()``, ``get_delta_weight("default")``) and, for LoRA,
  ``unet.fuse_lora()`` / diffusers' loaders work on it. Base weights are frozen, in ``model.dtype``; LoRA weights are float32.
* ``components["vae"]`` (``AutoencoderKL``, frozen, float32), ``components["text_encoder"]``
  (``CLIPTextModel``, frozen unless the adapter trains it; then it carries a peft LoRA ``"default"`` too),
  ``components["tokenizer"]`` (``CLIPTokenizer``) and ``components["noise_scheduler"]`` (a
  ``DDPMScheduler`` whose ``prediction_type`` is the one trained).
* ``module`` is an ``nn.Module`` holding exactly the trainable parts as attributes: ``module.unet``
  always, ``module.text_encoder`` when the text encoder trains. The core optimises it, saves every
  parameter that requires grad by name (``unet.…lora_A.default.weight``) and hands it to accelerate.
  Its ``forward(noisy_latents, timesteps, encoder_hidden_states=None, input_ids=None)`` returns the
  UNet's prediction (running the text encoder on ``input_ids`` when it trains).
* ``lr_scales`` holds ``{"text_encoder.": text_encoder_lr / train.lr}`` when the adapter sets its own
  text-encoder learning rate.

The ``stable-diffusion-xl`` ModelBundle (model kind ``stable-diffusion-xl``, preset ``tiny-sdxl``; LoRA only) is
the same with SDXL's parts: ``components`` adds ``text_encoder_2`` (``CLIPTextModelWithProjection``) and
``tokenizer_2``; ``module`` is an ``sdxl_model.SdxlModule`` holding ``unet`` and, when they train,
``text_encoder`` and ``text_encoder_2`` (``lr_scales`` then has ``"text_encoder."`` and ``"text_encoder_2."``);
its ``forward(noisy_latents, timesteps, time_ids, encoder_hidden_states=None, pooled=None, input_ids=None,
input_ids_2=None)`` passes the pooled embedding and ``time_ids`` as the UNet's ``added_cond_kwargs``.

Image records, from any data kind: ``{"id": str, "image": path or PIL image, "caption": str}``.
"""

"""Memory per process with FSDP2 sharding or DeepSpeed ZeRO vs DDP replication: a LLaMA-shaped model with
LoRA, 2 processes.

Run under a launcher, once per mode (docs/performance.md, "Sharded training: memory per process"):

    torchrun --nproc_per_node 2 bench/fsdp_memory.py --mode ddp
    torchrun --nproc_per_node 2 bench/fsdp_memory.py --mode fsdp
    torchrun --nproc_per_node 2 bench/fsdp_memory.py --mode zero2
    torchrun --nproc_per_node 2 bench/fsdp_memory.py --mode zero3

It goes through the same accelerate path ``loraplug run`` takes (``Accelerator.prepare`` of the PEFT model
and its optimizer; for FSDP the plugin read from ``FSDP_*`` settings and selected on CPUs as
loraplug.training.sharding does; for ZeRO the engine fitted and stepped as loraplug.training.zero and
stepping do), trains a few steps, and prints one JSON line per process: the model's
bytes this process holds, the optimizer state it holds (the measure that carries over to GPU memory), its resident memory after
``prepare`` and after training, and its peak resident memory (which includes loading the whole model
once: from_pretrained-style loading on rank 0 only is ``fsdp_cpu_ram_efficient_loading``). On CUDA the
same figures come from ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["ddp", "fsdp", "zero2", "zero3"], required=True)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    if args.mode == "fsdp":
        os.environ.update(
            ACCELERATE_USE_FSDP="true", FSDP_VERSION="2", FSDP_AUTO_WRAP_POLICY="TRANSFORMER_BASED_WRAP"
        )
    if args.mode.startswith("zero"):
        os.environ.update(ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_ZERO_STAGE=args.mode[-1])

    import torch
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from loraplug.training import zero
    from loraplug.training.sharding import use_fsdp_on_cpus
    from loraplug.training.stepping import AccelerateStepper, DeepSpeedStepper, Stepper

    zero.select_cpu_accelerator()
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    use_fsdp_on_cpus(accelerator)
    zero.use_deepspeed_on_cpus(accelerator, "no")
    zero.build_models_whole(accelerator)
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 11 // 4,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=args.hidden // 64,
        vocab_size=32000,
    )
    model = get_peft_model(
        LlamaForCausalLM(config), LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"])
    )
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    if zero.is_deepspeed(accelerator):
        zero.fit_engine_to_recipe(accelerator, micro_batch_size=2, grad_accum_steps=1, max_grad_norm=1.0)
    module, optimizer = accelerator.prepare(model, optimizer)
    stepper: Stepper = (
        DeepSpeedStepper(module)
        if zero.is_deepspeed(accelerator)
        else AccelerateStepper(accelerator, module, optimizer, 1.0)
    )
    import gc

    gc.collect()
    after_prepare = rss_mib()

    def held(p: torch.Tensor) -> int:
        local = p.ds_tensor if hasattr(p, "ds_tensor") else p.to_local() if hasattr(p, "to_local") else p
        return int(local.numel() * local.element_size())

    def state_held() -> int:
        """AdamW's moments this process holds (ZeRO: for its partition, plus the fp32 master copy)."""
        inner = getattr(optimizer, "optimizer", optimizer)
        if zero.is_deepspeed(accelerator):
            masters = sum(held(flat) for flat in zero.partitions(optimizer))
            return masters + sum(
                held(t) for s in inner.optimizer.state.values() for t in s.values() if torch.is_tensor(t)
            )
        return sum(held(t) for s in inner.state.values() for t in s.values() if torch.is_tensor(t))

    weights_here = sum(held(p) for p in module.parameters())
    started = time.monotonic()
    for _ in range(args.steps):
        ids = torch.randint(0, 32000, (2, 256), device=accelerator.device)
        stepper.backward(module(input_ids=ids, labels=ids).loss)
        stepper.apply()
    print(
        json.dumps(
            {
                "mode": args.mode,
                "rank": accelerator.process_index,
                "processes": accelerator.num_processes,
                "model_mib": round(total / 2**20),
                "weights_held_mib": round(weights_here / 2**20),
                "optimizer_state_held_mib": round(state_held() / 2**20, 1),
                "rss_after_prepare_mib": round(after_prepare),
                "rss_after_training_mib": round(rss_mib()),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "seconds_per_step": round((time.monotonic() - started) / args.steps, 2),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()

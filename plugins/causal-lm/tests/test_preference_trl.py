"""loraplug's DPO and ORPO losses and gradients equal TRL's on one fixed batch, to 1e-5.

DPO: TRL's own ``DPOTrainer`` (trl 1.16) builds and tokenizes a batch of two pairs and computes its
loss with its reference the base model with the adapter disabled (the model is given to it without
an adapter, with a ``peft_config``). The same token ids, as loraplug's pair batch (labels shifted from
TRL's completion mask), go through loraplug's ``dpo`` objective on the same module. The adapter's B
matrices are randomised after TRL attached it, so the policy differs from the reference and the loss
is not the trivial log 2.

ORPO: TRL's ``ORPOTrainer.get_batch_logps`` (mean log-probability per completion token, on the full
logits) and ``odds_ratio_loss`` give the odds-ratio term; the SFT term is the cross-entropy of the
chosen completions. TRL averages that NLL over the micro-batch's tokens, loraplug over each pair's
tokens and then over pairs (so that accumulation stays exact); the two agree when the chosen
completions are equally long, as in this batch.

Tolerance: both sides compute in float32 from the same weights; they differ in the order of sums
(TRL's fused head vs loraplug's row sums), ~1e-7 relative.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from loraplug import Batch
from loraplug_causal_lm.encode import IGNORE
from loraplug_causal_lm.preference import pair_loss
from loraplug_causal_lm.preference_options import DpoOptions, OrpoOptions

TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}
PAIRS = [
    {"prompt": "q: rain?", "chosen": "RAIN · MON", "rejected": "maybe snow"},
    {"prompt": "q: sun on a long day?", "chosen": "SUN · TUE · warm", "rejected": "no idea"},
]


def tiny_llama() -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loraplug_causal_lm.presets import preset_dir

    directory = preset_dir("tiny-llama", Path(os.environ["LORAPLUG_CACHE"]))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager")
    return model, AutoTokenizer.from_pretrained(directory)


def randomise_adapter(model: Any) -> None:
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)


def gradients(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def as_loraplug_batch(trl_batch: dict[str, torch.Tensor]) -> Batch:
    """TRL's rows ([chosen…, rejected…]) with loraplug's pre-shifted labels: position t predicts t+1."""
    ids, completion = trl_batch["input_ids"], trl_batch["completion_mask"]
    labels = torch.full_like(ids, IGNORE)
    labels[:, :-1] = torch.where(completion[:, 1:].bool(), ids[:, 1:], IGNORE)
    inputs = {"input_ids": ids, "attention_mask": trl_batch["attention_mask"], "labels": labels}
    pairs = ids.shape[0] // 2
    return Batch(inputs=inputs, num_targets=pairs, num_tokens=int(trl_batch["attention_mask"].sum()))


def loraplug_loss(
    kind: str, options: Any, model: Any, batch: Batch, chunk: int = 0
) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    result = pair_loss(kind, options, model, batch, chunk).result()
    mean = result.loss_sum / result.num_targets
    mean.backward()
    return float(mean.detach()), gradients(model)


@pytest.mark.parametrize(
    ("loss_type", "chunk"),
    [("sigmoid", 0), ("sigmoid", 5), ("ipo", 0)],
    ids=["sigmoid", "sigmoid-chunked", "ipo"],
)
def test_dpo_loss_and_gradients_equal_trl_dpo_trainer(tmp_path: Path, loss_type: str, chunk: int) -> None:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    base, tokenizer = tiny_llama()
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=2,
        report_to=[],
        use_cpu=True,
        beta=0.5,
        loss_type=loss_type,
        max_length=128,
        save_strategy="no",
    )
    trainer = DPOTrainer(
        model=base,
        args=args,
        train_dataset=Dataset.from_list(PAIRS),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0),
    )
    model = trainer.model.eval()
    randomise_adapter(model)
    trl_batch = next(iter(trainer.get_train_dataloader()))

    model.zero_grad(set_to_none=True)
    expected = trainer.compute_loss(model, trl_batch)
    expected.backward()
    expected_grads = gradients(model)
    assert abs(float(expected.detach()) - 0.6931) > 1e-2  # the policy is not the reference

    loss, grads = loraplug_loss(
        "dpo", DpoOptions(beta=0.5, loss_type=loss_type), model, as_loraplug_batch(trl_batch), chunk
    )
    assert loss == pytest.approx(float(expected.detach()), rel=1e-5)
    assert grads.keys() == expected_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], **TOLERANCE, msg=name)


def test_dpo_label_smoothing_is_conservative_dpo() -> None:
    """TRL 1.16's sigmoid loss has no label smoothing; loraplug's is conservative DPO (cDPO), checked here
    on the closed form: ε of the pairs are assumed flipped."""
    from loraplug_causal_lm.preference import dpo_loss

    logps = torch.tensor([-10.0, -12.0, -14.0, -9.0])
    reference = torch.tensor([-11.0, -12.5, -13.0, -10.0])
    counts = torch.tensor([4, 5, 6, 3])
    options = DpoOptions(beta=0.2, label_smoothing=0.1)
    delta = (logps[:2] - reference[:2]) - (logps[2:] - reference[2:])
    sig = torch.nn.functional.logsigmoid
    expected = -0.9 * sig(0.2 * delta) - 0.1 * sig(-0.2 * delta)
    torch.testing.assert_close(dpo_loss(options, logps, reference, counts).losses, expected)


def orpo_batch() -> Batch:
    """Two pairs of random tokens: chosen completions of 6 tokens each, rejected of 4 and 7; prompts masked."""
    generator = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 200, (4, 16), generator=generator)
    mask = torch.ones(4, 16, dtype=torch.long)
    labels = torch.full((4, 16), IGNORE)
    for row, (prompt, completion) in enumerate([(5, 6), (8, 6), (5, 4), (8, 7)]):
        end = prompt + completion
        labels[row, prompt - 1 : end - 1] = ids[row, prompt:end]
        mask[row, end:] = 0
    return Batch(
        inputs={"input_ids": ids, "attention_mask": mask, "labels": labels},
        num_targets=2,
        num_tokens=int(mask.sum()),
    )


def test_orpo_loss_and_gradients_equal_trl_odds_ratio_loss() -> None:
    from peft import LoraConfig, get_peft_model
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    base, _ = tiny_llama()
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear")).eval()
    randomise_adapter(model)
    batch = orpo_batch()
    inputs = batch.inputs

    model.zero_grad(set_to_none=True)
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    # TRL shifts inside get_batch_logps: its labels are the unshifted ones.
    unshifted = torch.cat([torch.full((4, 1), IGNORE), inputs["labels"][:, :-1]], dim=1)
    mean_logps = ORPOTrainer.get_batch_logps(logits, unshifted, average_log_prob=True)
    trl_self = SimpleNamespace(beta=0.25, accelerator=SimpleNamespace(device=torch.device("cpu")))
    odds_ratio, *_ = ORPOTrainer.odds_ratio_loss(trl_self, mean_logps[:2], mean_logps[2:])
    chosen_logits, chosen_labels = logits[:2, :-1], unshifted[:2, 1:]
    nll = torch.nn.functional.cross_entropy(
        chosen_logits.reshape(-1, logits.shape[-1]), chosen_labels.reshape(-1)
    )
    expected = nll - odds_ratio.mean()  # ORPOTrainer.get_batch_loss_metrics: policy_nll_loss - losses.mean()
    expected.backward()
    expected_grads = gradients(model)

    loss, grads = loraplug_loss("orpo", OrpoOptions(odds_ratio_weight=0.25), model, batch, chunk=0)
    assert loss == pytest.approx(float(expected.detach()), rel=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], **TOLERANCE, msg=name)
    # And through the chunked loss, the same.
    chunked, chunked_grads = loraplug_loss("orpo", OrpoOptions(odds_ratio_weight=0.25), model, batch, chunk=3)
    assert chunked == pytest.approx(float(expected.detach()), rel=1e-5)
    for name, grad in chunked_grads.items():
        torch.testing.assert_close(grad, expected_grads[name], **TOLERANCE, msg=name)

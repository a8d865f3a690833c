"""Tiny captioning models built here, in the real file layouts, so the real loading code is tested.

* ``tiny_tagger``: a WD14-style ``model.onnx`` (NHWC float32 BGR 0–255 in, one sigmoid probability per
  tag out) and its ``selected_tags.csv`` (tag_id,name,category,count). Its weights are chosen, not
  random, so each tag means something a test can check: ``red_shape`` fires on red (the last channel
  of BGR, so a tagger that fed RGB would call it blue), ``white_background`` on white.
* ``tiny_blip``: a BlipForConditionalGeneration from a small config with random weights, saved with
  save_pretrained beside a BlipProcessor whose BERT tokenizer is built from a word list (no download).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SHAPES = ROOT / "recipes" / "data" / "shapes"
SIZE = 32

#: (name, category, weights on the image's mean B, G, R in 0..1, bias): the tagger's logit per tag.
TAGS: list[tuple[str, int, tuple[float, float, float], float]] = [
    ("general", 9, (0, 0, 0), 2.0),
    ("sensitive", 9, (0, 0, 0), 0.0),
    ("questionable", 9, (0, 0, 0), -1.0),
    ("explicit", 9, (0, 0, 0), -2.0),
    ("red_shape", 0, (-10, 0, 10), -2.0),
    ("blue_shape", 0, (10, 0, -10), -2.0),
    ("white_background", 0, (10 / 3, 10 / 3, 10 / 3), -5.0),
    ("simple_background", 0, (0, 0, 0), 0.0),  # always 0.5: in at threshold 0.35, out at 0.6
    ("long_hair", 0, (0, 0, 0), 1.5),  # always 0.82
    (">_<", 0, (0, 0, 0), 2.0),  # a kaomoji: its underscore stays
    ("hatsune_miku", 4, (-10, 20, -10), -5.0),  # a character: fires on green
]


def build_tagger(directory: Path) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.array([w for _, _, w, _ in TAGS], dtype=np.float32).T / 255.0  # 0..255 in, as the real ones
    bias = np.array([b for *_, b in TAGS], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input", "axes"], ["mean"], keepdims=0),
            helper.make_node("MatMul", ["mean", "weights"], ["scaled"]),
            helper.make_node("Add", ["scaled", "bias"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["output"]),
        ],
        "tiny_wd14_tagger",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", len(TAGS)])],
        [
            numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes"),
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(bias, "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9  # what onnxruntime 1.20+ reads
    onnx.checker.check_model(model)
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(model, directory / "model.onnx")
    with (directory / "selected_tags.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tag_id", "name", "category", "count"])
        for index, (name, category, _, _) in enumerate(TAGS):
            writer.writerow([1000 + index, name, category, 100 - index])
    return directory


WORDS = [
    "a",
    "photo",
    "of",
    "red",
    "blue",
    "green",
    "orange",
    "circle",
    "square",
    "triangle",
    "on",
    "white",
    "navy",
    "background",
    "shape",
    "sun",
    "hills",
]


def build_blip(directory: Path) -> Path:
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    # BLIP's tokenizer is BERT's with a [DEC] token that starts every caption (the decoder's bos).
    vocab = {
        token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *WORDS])
    }
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]", model_max_length=SIZE)
    processor = BlipProcessor(BlipImageProcessor(size={"height": SIZE, "width": SIZE}), tokenizer)
    torch.manual_seed(0)
    small = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = BlipConfig(
        text_config={
            **small, "vocab_size": len(vocab), "encoder_hidden_size": 32, "max_position_embeddings": 40,
            "bos_token_id": vocab["[DEC]"], "pad_token_id": vocab["[PAD]"], "sep_token_id": vocab["[SEP]"],
            "eos_token_id": vocab["[SEP]"],
        },
        vision_config={**small, "image_size": SIZE, "patch_size": 8},
        projection_dim=32,
    )  # fmt: skip
    BlipForConditionalGeneration(config).save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_tagger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tagger(tmp_path_factory.mktemp("tiny-wd14"))


@pytest.fixture(scope="session")
def tiny_blip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_blip(tmp_path_factory.mktemp("tiny-blip"))


@pytest.fixture
def shapes(tmp_path: Path) -> Path:
    """A copy of the tiny SD data set (recipes/data/shapes): 32 images, each with its caption."""
    return Path(shutil.copytree(SHAPES, tmp_path / "shapes"))

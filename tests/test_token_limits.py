"""loraplug.toolkit.encode_within_token_limits: what model plugins encode their records with, so that
``[data.clean]``'s token limits drop samples where the tokenizer is, counted in the data report."""

from __future__ import annotations

from loraplug import DataBundle
from loraplug.data import CleanOptions, clean
from loraplug.toolkit import encode_within_token_limits


def _words(record: dict[str, str]) -> list[str]:
    return record["text"].split()


RECORDS = [{"id": f"r{i}", "text": "w " * n} for i, n in enumerate([1, 5, 2, 9])]


def test_the_limits_drop_long_samples_count_them_and_say_which_were_kept() -> None:
    data = clean(DataBundle(train=RECORDS, val=None), CleanOptions(max_tokens=4))
    samples, kept = encode_within_token_limits(data, "train", data.train, _words, len)
    assert samples == [["w"], ["w", "w"]] and kept == [0, 2]
    assert data.report is not None
    removed = next(f for f in data.report.split("train").filters if f.name == "length_tokens")
    assert removed.removed == 2 and [r.id for r in removed.examples] == ["r1", "r3"]


def test_without_limits_every_record_is_encoded() -> None:
    samples, kept = encode_within_token_limits(
        DataBundle(train=RECORDS, val=None), "train", RECORDS, _words, len
    )
    assert [len(s) for s in samples] == [1, 5, 2, 9] and kept == [0, 1, 2, 3]

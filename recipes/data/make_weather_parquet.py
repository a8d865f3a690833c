"""Generate recipes/data/weather-alpaca.parquet: recipes/data/weather.jsonl in the alpaca schema, for
recipes/tiny_datasets.toml (data kind `hf-dataset`).

Each {"prompt", "response"} line becomes a row {"instruction", "input", "output"} with an empty input,
so the recipe shows the column mapping of a common Hugging Face schema. Run it again to regenerate the
file (from weather.jsonl; make_weather.py regenerates that).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).parent


def main() -> None:
    lines = (HERE / "weather.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    table = pa.table(
        {
            "instruction": [r["prompt"] for r in rows],
            "input": ["" for _ in rows],
            "output": [r["response"] for r in rows],
        }
    )
    target = HERE / "weather-alpaca.parquet"
    temporary = target.with_suffix(".parquet.tmp")
    pq.write_table(table, temporary)
    temporary.replace(target)
    print(f"wrote {len(rows)} rows to {target}")


if __name__ == "__main__":
    main()

"""Generate recipes/data/weather_pairs.jsonl: preference pairs over the weather questions of make_weather.py.

Each pair asks the same question twice over: the chosen answer is the fixed report format, the
rejected one a vague sentence about another sky, so a preference objective has something clear to learn:

    {"prompt": "What's the weather in Oslo on Tuesday?",
     "chosen": "OSLO · TUE · rain · 9°C · wind 14 km/h SW",
     "rejected": "hard to say, maybe some snow in oslo"}

Run it again to regenerate the file; the output is the same on every machine (seeded).
"""

from __future__ import annotations

import random

from make_weather import SKIES, sample, write_jsonl

HEDGES = ["hard to say, maybe some {sky} in {city}", "probably {sky}? not sure about {city}", "{sky} i guess"]


def pair(rng: random.Random) -> dict[str, str]:
    chosen = sample(rng)
    city = chosen["response"].split(" · ")[0].lower()
    sky = rng.choice(SKIES)
    rejected = rng.choice(HEDGES).format(sky=sky, city=city)
    return {"prompt": chosen["prompt"], "chosen": chosen["response"], "rejected": rejected}


def main(count: int = 400, seed: int = 1) -> None:
    write_jsonl("weather_pairs.jsonl", pair, count, seed, "pairs")


if __name__ == "__main__":
    main()

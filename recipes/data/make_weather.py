"""Generate recipes/data/weather.jsonl: question/answer pairs in a fixed weather-report style.

The answers follow one distinctive format, so a tiny model visibly learns it within a minute:

    {"prompt": "What's the weather in Oslo on Tuesday?",
     "response": "OSLO · TUE · rain · 9°C · wind 14 km/h SW"}

Run it again to regenerate the file; the output is the same on every machine (seeded).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

CITIES = [
    "Oslo", "Lima", "Cairo", "Perth", "Quito", "Tokyo", "Paris", "Dakar", "Hanoi", "Seoul",
    "Rome", "Kyiv", "Doha", "Bern", "Riga", "Baku", "Nice", "Lyon", "Pune", "Cork",
]  # fmt: skip
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
SKIES = ["sunny", "cloudy", "rain", "snow", "fog", "storm", "drizzle", "clear"]
WINDS = ["N", "NE", "E", "SE", "S", "SW", "W", "NW"]
QUESTIONS = [
    "What's the weather in {city} on {day}?",
    "Forecast for {city}, {day}?",
    "How will the weather be in {city} on {day}?",
    "Give me {day}'s weather for {city}.",
    "{city} on {day}: what should I expect?",
]


def sample(rng: random.Random) -> dict[str, str]:
    city, day = rng.choice(CITIES), rng.choice(DAYS)
    sky = rng.choice(SKIES)
    low, high = (-12, 4) if sky == "snow" else (4, 34)
    temp = rng.randint(low, high)
    wind = rng.randint(2, 40)
    question = rng.choice(QUESTIONS).format(city=city, day=day)
    answer = f"{city.upper()} · {day[:3].upper()} · {sky} · {temp}°C · wind {wind} km/h {rng.choice(WINDS)}"
    return {"prompt": question, "response": answer}


def write_jsonl(
    name: str, make: Callable[[random.Random], dict[str, str]], count: int, seed: int, noun: str
) -> None:
    """``count`` rows made by ``make`` (from one seeded generator) as JSONL in this folder's file ``name``."""
    rng = random.Random(seed)
    out = Path(__file__).with_name(name)
    with open(out, "w", encoding="utf-8") as handle:
        for _ in range(count):
            handle.write(json.dumps(make(rng), ensure_ascii=False) + "\n")
    print(f"wrote {count} {noun} to {out}")


def main(count: int = 1200, seed: int = 0) -> None:
    write_jsonl("weather.jsonl", sample, count, seed, "samples")


if __name__ == "__main__":
    main()

"""Generate recipes/data/tickets.jsonl and tickets.csv: support messages labelled by topic, imbalanced.

Three classes in the proportions 70 / 20 / 10, so a classifier that answers "question" to everything
is 70% accurate yet has a macro-F1 of about 0.27; each message names its topic in a word or two among
filler, so a tiny model learns it within a few dozen steps:

    {"text": "hi team, double charge my order #4821 thanks", "label": "billing"}

Run it again to regenerate the files; the output is the same on every machine (seeded).
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

#: Each label's share of the samples and the words that give it away.
CLASSES = {
    "question": (0.7, ["how do I", "where can I", "is it possible to", "can you explain how to"]),
    "billing": (0.2, ["invoice", "refund", "double charge", "card was charged"]),
    "outage": (0.1, ["site is down", "error 503", "cannot log in", "servers are offline"]),
}
OPENERS = ["hi team,", "hello,", "hey,", "good morning,", ""]
FILLERS = ["my account", "the dashboard", "our plan", "the app", "my order", "the export"]
CLOSERS = ["thanks", "please help", "asap", "cheers", ""]


def sample(rng: random.Random) -> dict[str, str]:
    label = rng.choices(list(CLASSES), weights=[share for share, _ in CLASSES.values()])[0]
    # A reference number makes every message its own (deduplication keeps them all).
    filler = f"{rng.choice(FILLERS)} #{rng.randint(1000, 9999)}"
    words = [rng.choice(OPENERS), filler, rng.choice(CLASSES[label][1]), rng.choice(CLOSERS)]
    rng.shuffle(words[1:3])  # the giveaway is not always in the same place
    return {"text": " ".join(w for w in words if w), "label": label}


def main(count: int = 600, seed: int = 0) -> None:
    rng = random.Random(seed)
    rows = [sample(rng) for _ in range(count)]
    here = Path(__file__).parent
    with open(here / "tickets.jsonl", "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    with open(here / "tickets.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {count} samples to {here / 'tickets.jsonl'} and {here / 'tickets.csv'}")


if __name__ == "__main__":
    main()

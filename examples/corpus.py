"""A small, reproducible, licence-free English corpus generated from templates (seeded).

Simple declarative sentences about animals, places and weather: enough structure for a
few-million-parameter model to learn readable text in a few CPU minutes.
"""

from __future__ import annotations

import random

ANIMALS = ["fox", "cat", "dog", "bird", "horse", "rabbit", "owl", "bear", "mouse", "goat",
           "duck", "wolf", "frog", "deer", "sheep"]
ADJS = ["little", "old", "quick", "sleepy", "brown", "small", "happy", "quiet", "clever", "young",
        "tired", "brave", "gentle", "hungry", "lazy"]
PLACES = ["river", "forest", "garden", "hill", "village", "meadow", "barn", "lake", "road",
          "field", "bridge", "market", "house", "mountain", "beach"]
VERBS = ["walked", "ran", "went", "looked", "came", "hurried", "wandered", "sat", "slept", "waited"]
PREPS = {"walked": "to", "ran": "to", "went": "to", "looked": "at", "came": "to", "hurried": "to",
         "wandered": "near", "sat": "by", "slept": "near", "waited": "by"}
FOODS = ["apples", "bread", "berries", "seeds", "carrots", "fish", "corn", "honey", "grass", "cheese"]
TIMES = ["in the morning", "at night", "after the rain", "on a sunny day", "in the evening",
         "before dawn", "in the winter", "at noon"]
WEATHER = ["the sun was warm", "the wind was cold", "the sky was grey", "the rain was soft",
           "the air was still", "the snow was deep"]
FEELINGS = ["happy", "tired", "hungry", "calm", "curious", "sleepy", "glad", "cold"]


def sentence(rng: random.Random) -> str:
    a, adj, place = rng.choice(ANIMALS), rng.choice(ADJS), rng.choice(PLACES)
    verb = rng.choice(VERBS)
    kind = rng.randrange(5)
    if kind == 0:
        return f"the {adj} {a} {verb} {PREPS[verb]} the {place} {rng.choice(TIMES)}."
    if kind == 1:
        return f"the {a} ate some {rng.choice(FOODS)} and felt {rng.choice(FEELINGS)}."
    if kind == 2:
        return f"{rng.choice(TIMES)}, {rng.choice(WEATHER)} and the {a} stayed in the {place}."
    if kind == 3:
        b = rng.choice([x for x in ANIMALS if x != a])
        return f"the {adj} {a} met a {b} at the {place}, and they {rng.choice(['played', 'talked', 'rested', 'walked'])} together."
    return f"a {adj} {a} lived near the {place} and liked {rng.choice(FOODS)}."


def story(rng: random.Random, n: int | None = None) -> str:
    return " ".join(sentence(rng) for _ in range(n or rng.randint(2, 4)))


def corpus(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    return [story(rng) for _ in range(count)]

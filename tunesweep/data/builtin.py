"""The embedded offline dataset (`dataset.source: builtin:tasks`), written for tunesweep.

A seeded generator of simple Alpaca-format tasks with checkable answers, in two kinds:
- short templated answers (parity, sentiment, animal or fruit, starts with a vowel, larger
  number): their fixed sentence shapes are learned in a minute or two on a CPU, and the
  classification tasks are answered correctly, so fine-tuning visibly helps;
- copy tasks (reverse, sort, capitalise words): a tiny model does not learn these in that
  budget, which leaves room for decoding settings to make a difference.
Every (instruction, input) pair is unique, so a held-out row never repeats a training prompt.
"""

from __future__ import annotations

import random

ANIMALS = ["cat", "dog", "horse", "tiger", "lion", "zebra", "rabbit", "otter", "eagle", "owl", "wolf", "bear",
           "mouse", "goat", "sheep", "camel", "panda", "whale", "shark", "frog", "duck", "fox", "deer", "monkey"]
FRUITS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "orange", "peach", "pear", "plum", "kiwi",
          "melon", "lime", "fig", "papaya", "apricot", "guava", "olive", "date", "coconut", "avocado", "berry"]
POSITIVE = ["wonderful", "great", "lovely", "excellent", "delightful", "amazing", "pleasant", "fantastic", "superb"]
NEGATIVE = ["terrible", "awful", "boring", "dreadful", "horrible", "disappointing", "bad", "poor", "miserable"]
NOUNS = ["movie", "meal", "trip", "concert", "book", "game", "party", "hotel", "class", "show", "visit", "service"]
WORDS = ["red", "blue", "green", "river", "stone", "cloud", "table", "light", "music", "paper", "garden", "window",
         "silver", "winter", "summer", "forest", "ocean", "candle", "bridge", "rocket", "pencil", "island"]


def _parity(rng):
    n = rng.randint(0, 9999)
    instr = rng.choice(["Say whether the number is odd or even.", "Is this number odd or even?"])
    return instr, str(n), f"The number is {'even' if n % 2 == 0 else 'odd'}."


def _sentiment(rng):
    positive = rng.random() < 0.5
    adj = rng.choice(POSITIVE if positive else NEGATIVE)
    sentence = f"The {rng.choice(NOUNS)} was {rng.choice(['really ', 'very ', 'quite ', ''])}{adj}."
    instr = rng.choice(["Classify the sentiment of the sentence.", "Is the sentiment of this sentence positive or negative?"])
    return instr, sentence, f"The sentiment is {'positive' if positive else 'negative'}."


def _animal_or_fruit(rng):
    animal = rng.random() < 0.5
    word = rng.choice(ANIMALS if animal else FRUITS)
    instr = rng.choice(["Is this word an animal or a fruit?", "Tell whether the word names an animal or a fruit.",
                        "Animal or fruit?"])
    return instr, word, f"It is {'an animal' if animal else 'a fruit'}."


def _vowel(rng):
    word = rng.choice(ANIMALS + FRUITS + WORDS)
    instr = rng.choice(["Does the word start with a vowel?", "Tell whether the word begins with a vowel."])
    yes = word[0] in "aeiou"
    return instr, word, "Yes, it starts with a vowel." if yes else "No, it starts with a consonant."


def _larger(rng):
    a, b = rng.sample(range(1, 1000), 2)
    instr = rng.choice(["Which number is larger?", "Name the larger of the two numbers."])
    return instr, f"{a} and {b}", f"The larger number is {max(a, b)}."


def _word_list(rng):
    return rng.sample(WORDS, rng.randint(3, 5))


def _reverse(rng):
    words = _word_list(rng)
    return "Reverse the order of the words.", " ".join(words), " ".join(reversed(words))


def _sort(rng):
    words = _word_list(rng)
    return "Sort the words alphabetically.", " ".join(words), " ".join(sorted(words))


def _upper(rng):
    words = _word_list(rng)
    return "Write the words in capital letters.", " ".join(words), " ".join(words).upper()


SHORT_TASKS = [_parity, _sentiment, _animal_or_fruit, _vowel, _larger]
COPY_TASKS = [_reverse, _sort, _upper]
COPY_SHARE = 0.3  # enough to show decoding differences, few enough that fine-tuning gains show


def generate_records(n: int, seed: int = 42) -> list[dict]:
    """`n` Alpaca records with unique (instruction, input), the same for the same seed."""
    rng = random.Random(seed)
    out, seen = [], set()
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n:
            raise RuntimeError(f"builtin:tasks cannot make {n} distinct records")
        task = rng.choice(COPY_TASKS if rng.random() < COPY_SHARE else SHORT_TASKS)
        instruction, inp, output = task(rng)
        if (instruction, inp) in seen:
            continue
        seen.add((instruction, inp))
        out.append({"instruction": instruction, "input": inp, "output": output})
    return out

"""Synthetic visual reasoning problems drawn locally with PIL, each with an exact integer answer.

- ``count``: k shapes (circles or squares, 1 <= k <= 6) at random places; "How many circles are in the image?"
- ``bars``: 3-5 vertical bars of distinct heights; "Which bar is the tallest? Bars are numbered from 1 at the left."

Rows are TRL vision-language examples: ``{"prompt": [user message], "image": PIL.Image, "answer": "3", "task": ...}``
(TRL inserts the image before the user text). Seeded: the same (task, seed, index) gives the same problem.
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

__all__ = ["VISUAL_TASKS", "make_visual_examples"]

INSTRUCTION = "Reply with just the number."
_COLORS = ("red", "blue", "green", "black", "orange")


def _count_problem(rng: random.Random, size: int) -> tuple[Image.Image, str, int]:
    shape = rng.choice(("circle", "square"))
    k = rng.randint(1, 6)
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    cell = size // 3
    r = max(2, cell // 3)
    for slot in rng.sample(range(9), k):  # one shape per cell of a 3 x 3 grid: never overlapping
        cx = (slot % 3) * cell + cell // 2 + rng.randint(-cell // 6, cell // 6)
        cy = (slot // 3) * cell + cell // 2 + rng.randint(-cell // 6, cell // 6)
        box = (cx - r, cy - r, cx + r, cy + r)
        color = rng.choice(_COLORS)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=color)
    return image, f"How many {shape}s are in the image?", k


def _bars_problem(rng: random.Random, size: int) -> tuple[Image.Image, str, int]:
    n = rng.randint(3, 5)
    heights = rng.sample(range(2, 10), n)
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    width = size // (2 * n + 1)
    for i, h in enumerate(heights):
        x0 = (2 * i + 1) * width
        top = size - h * size // 10
        draw.rectangle((x0, top, x0 + width - 1, size - 1), fill=rng.choice(_COLORS))
    question = f"The image shows {n} bars, numbered 1 to {n} from the left. Which bar is the tallest?"
    return image, question, heights.index(max(heights)) + 1


VISUAL_TASKS = {"count": _count_problem, "bars": _bars_problem}


def make_visual_examples(task: str, n: int, seed: int = 0, image_size: int = 112) -> list[dict]:
    """``n`` problems of ``task`` ("count", "bars" or "mixed") as TRL rows; image_size in pixels (56 -> 4 tokens
    with the default Qwen-VL image processor, 112 -> 16)."""
    if task not in (*VISUAL_TASKS, "mixed"):
        raise ValueError(f"task={task!r}; use one of {sorted(VISUAL_TASKS)} or 'mixed'")
    rows = []
    for i in range(n):
        rng = random.Random(f"{task}-{seed}-{i}")
        name = rng.choice(sorted(VISUAL_TASKS)) if task == "mixed" else task
        image, question, answer = VISUAL_TASKS[name](rng, image_size)
        rows.append({
            "prompt": [{"role": "user", "content": f"{question} {INSTRUCTION}"}],
            "image": image,
            "answer": str(answer),
            "task": name,
        })
    return rows

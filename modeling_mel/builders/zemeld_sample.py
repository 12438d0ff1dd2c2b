"""Generate a small seeded ZEMELD-layout sample corpus (synthetic; for tests and demos).

Layout written under ``--out`` (see README.md of this folder)::

    images/kb/<entity_id>_<n>.png    KB images of each entity (its visual signature: a coloured shape)
    images/scenes/<image_id>.png     64x64 scene images with 1-3 annotated boxes
    annotations.jsonl                one line per scene image: image, caption, split, entities[box, mention, ...]
    kb.jsonl                         one line per entity: entity_id, name, description, images

Entities are split disjointly into train/dev/test (zero-shot). Each entity's signature is a (colour, shape) pair that
its KB images and its boxes in the scenes share; some names are ambiguous (shared words) and some are acronyms whose
mention is spelled out (initials rule of the candidate generator).

Usage: ``python -m modeling_mel.builders.zemeld_sample --out DIR [--seed 0] [--entities 60] [--images 200]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import time

from PIL import Image, ImageDraw

logger = logging.getLogger("zemeld.generate_zemeld_sample")

COLORS = {
    "red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (235, 215, 20),
    "purple": (140, 40, 170), "orange": (245, 140, 20), "cyan": (20, 200, 210), "magenta": (230, 40, 200),
    "brown": (130, 80, 30), "black": (15, 15, 15), "white": (250, 250, 250), "pink": (250, 160, 190),
    "olive": (120, 120, 20), "navy": (10, 20, 110), "teal": (10, 120, 120), "maroon": (120, 10, 30),
    "lime": (160, 240, 40), "grey": (120, 120, 120), "gold": (200, 160, 60), "violet": (180, 130, 240),
}
SHAPES = ("circle", "square", "triangle")
SYLLABLES = "ka lo mi ren tor va sel qui bar den fin gal hom jus lan mer nor pel ras tiv ul wen xan yor zet".split()
KINDS = ("Tower", "Bridge", "Palace", "Stadium", "Monument", "Museum", "Abbey", "Fountain")
PLACES = ("the north", "the coast", "the old town", "the valley", "the capital", "the island")
SIZE = 64


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(2)).capitalize()


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: list[int], color: tuple[int, int, int]) -> None:
    x1, y1, x2, y2 = box
    if shape == "circle":
        draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=color)
    elif shape == "square":
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=color)
    else:
        draw.polygon([((x1 + x2) / 2, y1), (x1, y2 - 1), (x2 - 1, y2 - 1)], fill=color)


def _background(rng: random.Random) -> tuple[int, int, int]:
    g = rng.randint(150, 200)
    return (g, g, g)


def make_entities(rng: random.Random, n: int) -> list[dict]:
    signatures = [(c, s) for c in COLORS for s in SHAPES]
    rng.shuffle(signatures)
    if n > len(signatures):
        raise ValueError(f"at most {len(signatures)} entities (distinct colour/shape signatures), got {n}")
    entities, used = [], set()
    family = [_word(rng) for _ in range(max(2, n // 10))]
    for i, (color, shape) in enumerate(signatures[:n]):
        if i % 10 == 3:  # acronym entity: name "ABC", mention spelled out "Alo Bren Cqui"
            words = [_word(rng) for _ in range(3)]
            name, alias = "".join(w[0] for w in words).upper(), " ".join(words)
        elif i % 5 == 1:  # ambiguous: shares a first word with other entities
            name, alias = f"{rng.choice(family)} {rng.choice(KINDS)}", None
        else:
            name, alias = f"{_word(rng)} {rng.choice(KINDS)}", None
        while name in used:
            name = f"{name} {_word(rng)}"
        used.add(name)
        entities.append(
            {
                "entity_id": f"Q{1000 + i}",
                "name": name,
                "alias": alias,
                "color": color,
                "shape": shape,
                "description": f"{name} is a {color} {shape} shaped landmark in {rng.choice(PLACES)}.",
            }
        )
    return entities


def generate(out: str, seed: int = 0, n_entities: int = 60, n_images: int = 200, kb_images: int = 2) -> dict:
    """Write the sample under `out`; returns counts. Deterministic for a given seed."""
    rng = random.Random(seed)
    os.makedirs(os.path.join(out, "images", "kb"), exist_ok=True)
    os.makedirs(os.path.join(out, "images", "scenes"), exist_ok=True)
    entities = make_entities(rng, n_entities)
    order = list(range(n_entities))
    rng.shuffle(order)
    n_train, n_dev = int(n_entities * 0.6), int(n_entities * 0.2)
    split_of = {}
    for rank, i in enumerate(order):
        split_of[entities[i]["entity_id"]] = "train" if rank < n_train else "dev" if rank < n_train + n_dev else "test"

    with open(os.path.join(out, "kb.jsonl"), "w", encoding="utf-8") as f:
        for e in entities:
            paths = []
            for k in range(kb_images):
                img = Image.new("RGB", (SIZE, SIZE), _background(rng))
                side = rng.randint(28, 52)
                x, y = rng.randint(0, SIZE - side), rng.randint(0, SIZE - side)
                _draw(ImageDraw.Draw(img), e["shape"], [x, y, x + side, y + side], COLORS[e["color"]])
                rel = f"images/kb/{e['entity_id']}_{k}.png"
                img.save(os.path.join(out, rel))
                paths.append(rel)
            row = {"entity_id": e["entity_id"], "name": e["name"], "description": e["description"], "images": paths}
            f.write(json.dumps(row) + "\n")

    by_split = {s: [e for e in entities if split_of[e["entity_id"]] == s] for s in ("train", "dev", "test")}
    slots = [[2, 2, 30, 30], [34, 2, 62, 30], [2, 34, 30, 62], [34, 34, 62, 62]]
    n_mentions = 0
    with open(os.path.join(out, "annotations.jsonl"), "w", encoding="utf-8") as f:
        for j in range(n_images):
            split = rng.choices(("train", "dev", "test"), weights=(0.6, 0.2, 0.2))[0]
            chosen = rng.sample(by_split[split], k=min(len(by_split[split]), rng.randint(1, 3)))
            img = Image.new("RGB", (SIZE, SIZE), _background(rng))
            draw = ImageDraw.Draw(img)
            places = rng.sample(slots, k=len(chosen))
            mentions = [e["alias"] or e["name"] for e in chosen]
            caption, starts = "Photo of ", []
            for m_i, mention in enumerate(mentions):
                if m_i:
                    caption += " and " if m_i == len(mentions) - 1 else ", "
                starts.append(len(caption))
                caption += mention
            caption += f" in {rng.choice(PLACES)}."
            annotated = []
            for e, slot, mention, start in zip(chosen, places, mentions, starts):
                shrink = rng.randint(0, 4)
                box = [slot[0] + shrink, slot[1] + shrink, slot[2] - shrink, slot[3] - shrink]
                _draw(draw, e["shape"], box, COLORS[e["color"]])
                annotated.append(
                    {"box": box, "mention": mention, "mention_start": start, "entity_id": e["entity_id"]}
                )
            rel = f"images/scenes/img{j:04d}.png"
            img.save(os.path.join(out, rel))
            row = {"image_id": f"img{j:04d}", "image": rel, "caption": caption, "split": split, "entities": annotated}
            f.write(json.dumps(row) + "\n")
            n_mentions += len(annotated)
    return {"entities": n_entities, "images": n_images, "mentions": n_mentions}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate a seeded synthetic ZEMELD-layout sample corpus.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--entities", type=int, default=60, help="number of KB entities (<= 60, default 60)")
    parser.add_argument("--images", type=int, default=200, help="number of scene images (default 200)")
    parser.add_argument("--kb-images", type=int, default=2, help="KB images per entity (default 2)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.time()
    counts = generate(args.out, args.seed, args.entities, args.images, args.kb_images)
    logger.info("wrote %s to %s in %.1fs", counts, args.out, time.time() - start)


if __name__ == "__main__":
    main()

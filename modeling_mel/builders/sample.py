"""Seeded generator of a small synthetic Twitter MEL corpus, in the raw Twitter formats or in mel_jsonl.

The corpus imitates the difficulty of Twitter MEL: several entities share a surname (4 "wiggins",
4 "taylor", ...) so a mention such as "wiggins" is ambiguous by name; about 40% of the tweets have
generic text with no topical cue, the others contain words of the entity's topic (which its profile
description also uses); every entity has a visual signature (a colour and a shape, drawn with noise)
shared by the images of its timeline and of the tweets that mention it.

    python -m modeling_mel.builders.sample --out outputs/sample            # raw Twitter layout
    python -m modeling_mel.builders.sample --out outputs/sample_jsonl --layout jsonl

(``python datasets_scripts/sample/generate_sample.py`` in a source checkout is the same.) Library use::

    from modeling_mel.builders import sample
    counts = sample.generate_twitter_sample("outputs/sample", seed=0)
"""

from __future__ import annotations

import argparse
import colorsys
import hashlib
import json
import logging
import os
import random
import sys
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

# surname -> number of entities sharing it (ambiguous mentions); the rest get unique surnames
SHARED_SURNAMES = [("wiggins", 4), ("taylor", 4), ("smith", 4), ("johnson", 3), ("brown", 3), ("martin", 2)]
UNIQUE_SURNAMES = [
    "okafor", "lindqvist", "moreau", "kowalski", "tanaka", "oliveira", "novak", "haddad", "fitzgerald",
    "castillo", "nakamura", "petrov", "schneider", "mbappe", "delacroix", "ivanova", "gallagher", "rossi",
    "andersen", "kapoor", "whitaker", "yamamoto", "fernandez", "osei", "larsen", "dubois", "kim", "patel",
]  # fmt: skip
FIRST_NAMES = [
    "andrew", "bradley", "lauren", "marcus", "chloe", "james", "sophie", "daniel", "emma", "tyler", "grace",
    "oliver", "maya", "lucas", "nina", "samuel", "elena", "felix", "hannah", "isaac", "julia", "leo", "ruby",
    "victor", "zoe", "adam", "clara", "diego", "freya", "hugo", "iris", "jonah", "kira", "liam", "mila",
]  # fmt: skip
TOPICS = {
    "basketball": ["dunk", "rebound", "playoffs", "court", "nba", "buzzer", "assist", "timberwolves"],
    "cycling": ["peloton", "tour", "sprint", "stage", "yellow", "jersey", "climb", "velodrome"],
    "music": ["album", "concert", "tour", "setlist", "guitar", "studio", "single", "lyrics"],
    "politics": ["vote", "parliament", "policy", "campaign", "debate", "minister", "election", "bill"],
    "football": ["goal", "derby", "striker", "league", "penalty", "transfer", "keeper", "kickoff"],
    "cooking": ["recipe", "kitchen", "sourdough", "chef", "oven", "spices", "dinner", "tasting"],
    "science": ["lab", "paper", "telescope", "genome", "experiment", "data", "physics", "research"],
    "fashion": ["runway", "collection", "designer", "couture", "vogue", "fabric", "style", "catwalk"],
    "tennis": ["serve", "wimbledon", "ace", "racket", "tiebreak", "baseline", "volley", "slam"],
    "film": ["premiere", "director", "screenplay", "cinema", "trailer", "festival", "scene", "oscar"],
}
LOCATIONS = [
    "Minneapolis, MN", "London", "Paris, France", "Toronto", "Sydney", "Berlin", "Austin, TX", "Milan",
    "Tokyo", "Lagos", "", "Dublin", "Madrid", "Seattle, WA", "Oslo",
]  # fmt: skip
SHAPES = ("circle", "square", "triangle", "cross", "ring")
GENERIC_TEMPLATES = [
    "{m} was there today!",
    "can't believe what {m} just did",
    "so proud of {m} right now",
    "look who it is: {m}",
    "{m} again, unbelievable",
    "best day ever with {m}",
    "throwback to meeting {m}",
    "everyone is talking about {m} this morning",
]
TOPICAL_TEMPLATES = [
    "{m} with another {w1} tonight, what a {w2}",
    "{w1} news: {m} talks about the {w2}",
    "great {w1} from {m} #{w2}",
    "{m} and the {w1} everyone expected, {w2} next",
    "watching {m} at the {w1}, pure {w2}",
]
PAIR_TEMPLATES = [
    "{m} and {m2} together today",
    "{m} meets {m2} at the {w1}",
    "{w1} time: {m} vs {m2}",
]
TIMELINE_TEMPLATES = [
    "{w1} day, {w2} and more",
    "thanks everyone for the {w1} support",
    "new {w1} coming soon #{w2}",
    "{w1} then {w2}, long week",
    "back to the {w1}",
]
MENTION_TWEET_BASE = 1_300_000_000_000_000_000
TIMELINE_TWEET_BASE = 1_200_000_000_000_000_000


@dataclass
class _Entity:
    screen_name: str
    first: str
    surname: str
    topic: str
    location: str
    hue: float
    shape: str
    timeline: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.first.title()} {self.surname.title()}"

    @property
    def description(self) -> str:
        words = TOPICS[self.topic]
        return f"{self.topic} | {words[0]}, {words[1]} and {words[2]}. Official account of {self.name}."


def _entities(n: int, rng: random.Random) -> list[_Entity]:
    surnames = [s for s, k in SHARED_SURNAMES for _ in range(k)] + list(UNIQUE_SURNAMES)
    while len(surnames) < n:
        surnames.append(f"user{len(surnames)}")
    surnames = surnames[:n]
    topics = list(TOPICS)
    firsts = list(FIRST_NAMES)
    rng.shuffle(firsts)
    out, used = [], set()
    for i, surname in enumerate(surnames):
        first = firsts[i % len(firsts)]
        screen = f"{first}{surname}"
        if i % 3 == 0:
            screen = f"{rng.randint(1, 99)}{surname}"
        elif i % 3 == 1:
            screen = f"{first[0]}_{surname}"
        while screen.lower() in used:
            screen += str(rng.randint(0, 9))
        used.add(screen.lower())
        out.append(
            _Entity(
                screen_name=screen.title() if i % 4 == 0 else screen,
                first=first,
                surname=surname,
                topic=topics[i % len(topics)],  # consecutive entities (one surname) get different topics
                location=LOCATIONS[rng.randrange(len(LOCATIONS))],
                hue=(i * 0.6180339887) % 1.0,
                shape=SHAPES[i % len(SHAPES)],
            )
        )
    return out


def _draw(entity: _Entity, rng: np.random.Generator, size: int) -> Image.Image:
    """The entity's visual signature: its shape in its colour on a noisy background."""
    bg = rng.uniform(90, 200, size=3)
    img = np.clip(bg + rng.normal(0, 18, size=(size, size, 3)), 0, 255)
    r, g, b = colorsys.hsv_to_rgb((entity.hue + rng.normal(0, 0.015)) % 1.0, 0.85, 0.95)
    colour = np.array([r, g, b]) * 255
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0.35, 0.65, size=2) * size
    rad = rng.uniform(0.22, 0.34) * size
    dy, dx = yy - cy, xx - cx
    if entity.shape == "circle":
        mask = dy**2 + dx**2 <= rad**2
    elif entity.shape == "square":
        mask = (np.abs(dy) <= rad * 0.85) & (np.abs(dx) <= rad * 0.85)
    elif entity.shape == "triangle":
        mask = (dy <= rad * 0.8) & (dy >= -rad) & (np.abs(dx) <= (dy + rad) * 0.6)
    elif entity.shape == "cross":
        mask = ((np.abs(dy) <= rad * 0.3) & (np.abs(dx) <= rad)) | ((np.abs(dx) <= rad * 0.3) & (np.abs(dy) <= rad))
    else:  # ring
        d2 = dy**2 + dx**2
        mask = (d2 <= rad**2) & (d2 >= (rad * 0.55) ** 2)
    img[mask] = np.clip(colour + rng.normal(0, 12, size=(int(mask.sum()), 3)), 0, 255)
    return Image.fromarray(img.astype(np.uint8), "RGB")


def _media_url(tweet_id: int) -> str:
    return f"https://pbs.twimg.com/media/{hashlib.md5(str(tweet_id).encode()).hexdigest()[:15]}.png"


def _surface(entity: _Entity, rng: random.Random) -> str:
    u = rng.random()
    if u < 0.65:
        return entity.surname
    if u < 0.8:
        return entity.surname.title()
    return entity.name


def _corpus(seed: int, n_entities: int, n_mentions: int) -> dict:
    """The corpus in memory (no images drawn): entities, tweets with their mentions, split."""
    from modeling_mel.corpus import paper_split

    rng = random.Random(seed)
    entities = _entities(n_entities, rng)
    tl_id = TIMELINE_TWEET_BASE + seed * 1_000_000
    for e in entities:
        for _ in range(rng.randint(3, 6)):
            tl_id += rng.randint(1, 10_000)
            w1, w2 = rng.sample(TOPICS[e.topic], 2)
            text = rng.choice(TIMELINE_TEMPLATES).format(w1=w1, w2=w2)
            e.timeline.append({"tweet_id": str(tl_id), "text": text, "url": _media_url(tl_id)})

    order = list(range(len(entities)))
    rng.shuffle(order)
    picks = iter(order * 1000)
    tweets, n_rows = [], 0
    tw_id = MENTION_TWEET_BASE + seed * 1_000_000
    while n_rows < n_mentions:
        tw_id += rng.randint(1, 10_000)
        e = entities[next(picks)]
        m = _surface(e, rng)
        words = TOPICS[e.topic]
        pair = n_mentions - n_rows >= 2 and rng.random() < 0.12
        if pair:
            e2 = entities[next(picks)]
            while e2.surname == e.surname:
                e2 = entities[rng.randrange(len(entities))]
            m2 = _surface(e2, rng)
            text = rng.choice(PAIR_TEMPLATES).format(m=m, m2=m2, w1=rng.choice(words))
            s1 = text.index(m)
            s2 = text.index(m2, s1 + len(m))
            mentions = [(s1, m, e), (s2, m2, e2)]
        else:
            if rng.random() < 0.4:
                text = rng.choice(GENERIC_TEMPLATES).format(m=m)
            else:
                w1, w2 = rng.sample(words, 2)
                text = rng.choice(TOPICAL_TEMPLATES).format(m=m, w1=w1, w2=w2)
            mentions = [(text.index(m), m, e)]
        has_image = rng.random() >= 0.05
        tweets.append(
            {
                "tweet_id": str(tw_id),
                "text": text,
                "url": _media_url(tw_id) if has_image else "",
                "has_image": has_image,
                "image_entity": e,
                "mentions": [
                    {
                        "id": str(tw_id) if len(mentions) == 1 else f"{tw_id}-{s}",
                        "start": s,
                        "end": s + len(mm),
                        "mention": mm,
                        "entity": ee,
                    }
                    for s, mm, ee in mentions
                ],
            }
        )
        n_rows += len(mentions)

    rows = [(t, m) for t in tweets for m in t["mentions"]]
    idx = paper_split([m["entity"].screen_name for _, m in rows], seed=seed)
    row_split = {}
    for split, ids in idx.items():
        for i in ids:
            row_split.setdefault(id(rows[i][1]), set()).add(split)
    for t in tweets:  # tweet-level split: the tweet follows its first mention
        t["splits"] = sorted(row_split[id(t["mentions"][0])])
        t["split"] = next(s for s in ("train", "dev", "test") if s in t["splits"])
    return {"entities": entities, "tweets": tweets}


def _write_images(corpus: dict, out_dir: str, seed: int, image_size: int) -> int:
    img_dir = os.path.join(out_dir, "images")
    os.makedirs(img_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = 0
    for e in corpus["entities"]:
        for t in e.timeline:
            _draw(e, rng, image_size).save(os.path.join(img_dir, f"{t['tweet_id']}.png"), compress_level=1)
            n += 1
    for t in corpus["tweets"]:
        if t["has_image"]:
            _draw(t["image_entity"], rng, image_size).save(
                os.path.join(img_dir, f"{t['tweet_id']}.png"), compress_level=1
            )
            n += 1
    return n


def _counts(corpus: dict, n_images: int) -> dict[str, int]:
    tweets = corpus["tweets"]
    counts = {
        "entities": len(corpus["entities"]),
        "tweets": len(tweets),
        "mentions": sum(len(t["mentions"]) for t in tweets),
        "tweets_with_two_mentions": sum(len(t["mentions"]) > 1 for t in tweets),
        "tweets_without_image": sum(not t["has_image"] for t in tweets),
        "mentions_without_image": sum(len(t["mentions"]) for t in tweets if not t["has_image"]),
        "timeline_tweets": sum(len(e.timeline) for e in corpus["entities"]),
        "images": n_images,
    }
    for s in ("train", "train07", "train05", "dev", "test"):
        counts[s] = sum(len(t["mentions"]) for t in tweets if s in t["splits"])
    return counts


def generate_twitter_sample(
    out_dir: str, seed: int = 0, n_entities: int = 40, n_mentions: int = 300, image_size: int = 64
) -> dict[str, int]:
    """Write the sample corpus in the raw Twitter MEL formats (read by ``twitter_mel``).

    Files: ``ground_truth.tsv``, ``timeline_kb.tsv``, ``users.jsonl``, ``Train_ids.txt``,
    ``Train07_ids.txt``, ``Train05_ids.txt``, ``Dev_ids.txt``, ``Test_ids.txt``, ``images/<tweetId>.png``.
    The id lists hold tweet ids; a tweet with two mentions follows the split of its first mention.

    Returns:
        counts: entities, tweets, mentions, timeline_tweets, images and mentions per split.
    """
    if n_entities < 2 or n_mentions < 1:
        raise ValueError(f"Need n_entities >= 2 and n_mentions >= 1, got {n_entities} and {n_mentions}.")
    corpus = _corpus(seed, n_entities, n_mentions)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "ground_truth.tsv"), "w", encoding="utf-8") as f:
        for t in corpus["tweets"]:
            for m in t["mentions"]:
                gold = m["entity"].screen_name
                gold = "@" + (gold.lower() if int(t["tweet_id"]) % 5 == 0 else gold)  # matching ignores case
                cols = [t["tweet_id"], m["start"], m["end"], m["mention"], gold, t["text"], t["url"]]
                f.write("\t".join(map(str, cols)) + "\n")
    with open(os.path.join(out_dir, "timeline_kb.tsv"), "w", encoding="utf-8") as f:
        for i, e in enumerate(corpus["entities"]):
            screen = ("@" if i % 2 == 0 else "") + e.screen_name  # the released file has both forms
            for t in e.timeline:
                f.write("\t".join([screen, t["tweet_id"], t["text"], t["url"]]) + "\n")
    with open(os.path.join(out_dir, "users.jsonl"), "w", encoding="utf-8") as f:
        for i, e in enumerate(corpus["entities"]):
            rec = {
                "userId": str(10_000 + i),
                "userScreenName": e.screen_name,
                "userName": e.name,
                "userLocation": e.location,
                "userDescription": e.description,
                "userFollowersCount": 100 * (i + 1),
            }
            f.write(json.dumps(rec) + "\n")
    for split, fname in (
        ("train", "Train_ids.txt"),
        ("train07", "Train07_ids.txt"),
        ("train05", "Train05_ids.txt"),
        ("dev", "Dev_ids.txt"),
        ("test", "Test_ids.txt"),
    ):
        with open(os.path.join(out_dir, fname), "w", encoding="utf-8") as f:
            f.writelines(t["tweet_id"] + "\n" for t in corpus["tweets"] if split in t["splits"])
    counts = _counts(corpus, _write_images(corpus, out_dir, seed, image_size))
    logger.info("Twitter MEL sample in %s: %s", out_dir, counts)
    return counts


def generate_jsonl_sample(
    out_dir: str, seed: int = 0, n_entities: int = 40, n_mentions: int = 300, image_size: int = 64
) -> dict[str, int]:
    """Write the same corpus as :func:`generate_twitter_sample` in the mel_jsonl layout.

    Files: ``mentions.jsonl`` (with a ``split`` field: train, dev or test), ``kb.jsonl`` (with
    screen_name, location, images and timeline), ``images/<tweetId>.png``. Same seed, same rows.
    """
    if n_entities < 2 or n_mentions < 1:
        raise ValueError(f"Need n_entities >= 2 and n_mentions >= 1, got {n_entities} and {n_mentions}.")
    corpus = _corpus(seed, n_entities, n_mentions)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "mentions.jsonl"), "w", encoding="utf-8") as f:
        for t in corpus["tweets"]:
            for m in t["mentions"]:
                rec = {
                    "id": m["id"],
                    "text": t["text"],
                    "mention": m["mention"],
                    "mention_start": m["start"],
                    "mention_end": m["end"],
                    "entity_id": m["entity"].screen_name,
                    "split": t["split"],
                }
                if t["has_image"]:
                    rec["image"] = f"images/{t['tweet_id']}.png"
                f.write(json.dumps(rec) + "\n")
    with open(os.path.join(out_dir, "kb.jsonl"), "w", encoding="utf-8") as f:
        for e in corpus["entities"]:
            timeline = sorted(e.timeline, key=lambda t: -int(t["tweet_id"]))
            rec = {
                "entity_id": e.screen_name,
                "name": e.name,
                "description": e.description,
                "screen_name": e.screen_name,
                "location": e.location,
                "images": [f"images/{t['tweet_id']}.png" for t in timeline],
                "timeline": [
                    {"tweet_id": t["tweet_id"], "text": t["text"], "image": f"images/{t['tweet_id']}.png"}
                    for t in timeline
                ],
            }
            f.write(json.dumps(rec) + "\n")
    counts = _counts(corpus, _write_images(corpus, out_dir, seed, image_size))
    logger.info("mel_jsonl sample in %s: %s", out_dir, counts)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the synthetic Twitter MEL sample corpus.")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--layout", choices=("twitter", "jsonl"), default="twitter", help="raw Twitter files or mel_jsonl"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n_entities", type=int, default=40)
    parser.add_argument("--n_mentions", type=int, default=300)
    parser.add_argument("--image_size", type=int, default=64)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    gen = generate_twitter_sample if args.layout == "twitter" else generate_jsonl_sample
    counts = gen(
        args.out, seed=args.seed, n_entities=args.n_entities, n_mentions=args.n_mentions, image_size=args.image_size
    )
    print(json.dumps(counts, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

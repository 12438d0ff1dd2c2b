"""PFMEL pre-training pairs: the sentences of the linked mentions, the draw of their next sentences and the NSP
pairs of the three pre-training tasks.

Pre-training (paper, section 3.3). Each linked mention gives a *sentence*
``{text, image, entity_context, entity_image}``: the tweet text and image, and the context and image of its
gold entity (``entity_context(profile, timeline)``; the entity image is the mean ResNet feature over the
entity's timeline images). Every sentence ``s`` draws a next sentence ``n``: with probability 0.5 a random
*other* sentence (label ``1`` = random), otherwise itself (label ``0`` = is next, BERT's convention). By default
(``negative_draw="distinct"``) the random sentence comes from another tweet and its entity is gold for no mention
of either tweet, so that no identical input pair carries both labels (a tweet with two mentions would otherwise
be drawn as its own "random" next sentence); ``"paper"`` is the paper's plain draw among all other sentences.
The tasks then make pairs
``(A | B)``:

* ``mixed`` (two pairs a sentence): ``(s.text | n.entity_image)`` and ``(s.entity_context | n.image)``;
* ``text``: ``(s.text | n.entity_context)``;
* ``multi``: ``(s.text + s.image | n.entity_context + n.entity_image)``.

Role swapping (``swap_roles=True``) adds, for every ``(s, n)``, the same task pairs built from ``(n, s)``: the
original next sentence takes the role of the sentence and vice versa, with the same label, e.g.
``(n.text | s.entity_image)``. A sentence that drew itself (label 0) gives an identical swapped pair; it is
kept, so swapping exactly doubles the data (``mixed``: ``2n -> 4n``, ``text`` and ``multi``: ``n -> 2n``).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Iterable, Sequence

logger = logging.getLogger(__name__)

#: Pre-training tasks and the names :func:`check_tasks` accepts for them.
TASKS: tuple[str, ...] = ("mixed", "text", "multi")
TASK_ALIASES: dict[str, str] = {"mixed": "mixed", "mix": "mixed", "text": "text", "multi": "multi", "multimodal": "multi"}


def check_tasks(tasks: str | Iterable[str]) -> tuple[str, ...]:
    """Normalise a task list (``"mixed,text"`` or ``["mixed", "text"]``); ``ValueError`` names an unknown task."""
    if isinstance(tasks, str):
        tasks = [t for t in tasks.replace(",", " ").split() if t]
    out: list[str] = []
    for t in tasks:
        key = str(t).strip().lower()
        if key not in TASK_ALIASES:
            raise ValueError(f"unknown pre-training task {t!r}; valid tasks are {list(TASKS)} (aliases: mix, multimodal)")
        if TASK_ALIASES[key] not in out:
            out.append(TASK_ALIASES[key])
    if not out:
        raise ValueError(f"no pre-training task given; choose from {list(TASKS)}")
    return tuple(out)


@dataclass
class Sentence:
    """A PFMEL pre-training sentence: a tweet (text, image row) and its gold entity (context, image row)."""

    mention_id: str
    text: str
    image: int
    entity_id: str
    entity_context: str
    entity_image: int


@dataclass
class NSPPair:
    """One NSP pair before tokenisation: sentence A and B as text plus image rows, label and task."""

    text_a: str | None
    images_a: tuple[int, ...]
    text_b: str | None
    images_b: tuple[int, ...]
    label: int
    task: str
    sentence: int = -1  # index of the sentence (A side) in its list
    next: int = -1  # index of the next sentence (B side)
    swapped: bool = False


NEGATIVE_DRAWS = ("distinct", "paper")


def draw_next_sentences(sentences: Sequence[Sentence], seed: int = 0, negative_draw: str = "distinct") -> list[tuple[int, int]]:
    """For each sentence ``i`` a ``(next index, label)``: itself (0) or, with probability 0.5, another (1).

    ``negative_draw="paper"`` draws the other sentence among all other sentences, as the paper's text says. With
    several mentions in one tweet that draw can contradict itself: sentence ``(tweet T, entity E2)`` drawn as the
    random next sentence of ``(T, E1)`` gives the input ``(T, E2)`` label 1, while ``(T, E2)`` itself carries
    label 0. ``"distinct"`` (the default) draws from another tweet whose entity is not gold for any mention of
    the first tweet, and the other way round (needed by the role-swapped pairs), comparing tweets by text and
    by image: no identical ``(A, B)`` input carries both labels. A sentence for which no such sentence exists
    (a tiny corpus) keeps label 0; the number is logged.
    """
    if negative_draw not in NEGATIVE_DRAWS:
        raise ValueError(f"unknown negative_draw {negative_draw!r}; choose one of {list(NEGATIVE_DRAWS)}")
    n = len(sentences)
    if n < 2:
        raise ValueError(f"NSP pre-training needs at least 2 linked sentences, got {n}")
    rng = random.Random(seed)
    gold_of_text: dict[str, set[str]] = {}
    gold_of_image: dict[int, set[str]] = {}
    for s in sentences:
        gold_of_text.setdefault(s.text, set()).add(s.entity_id)
        if s.image:  # row 0 is "no image"
            gold_of_image.setdefault(s.image, set()).add(s.entity_id)

    def golds(s: Sentence) -> set[str]:
        return gold_of_text[s.text] | gold_of_image.get(s.image, set()) if s.image else gold_of_text[s.text]

    def distinct(s: Sentence, t: Sentence) -> bool:
        return (
            t.text != s.text
            and (not s.image or t.image != s.image)
            and t.entity_id not in golds(s)
            and s.entity_id not in golds(t)
        )

    out, stuck = [], 0
    for i, s in enumerate(sentences):
        if rng.random() >= 0.5:
            out.append((i, 0))
            continue
        if negative_draw == "paper":
            j = rng.randrange(n - 1)
            out.append((j + (j >= i), 1))
            continue
        j = -1
        for _ in range(64):  # rejection sampling; a full scan only when the corpus is tiny or one-sided
            k = rng.randrange(n)
            if k != i and distinct(s, sentences[k]):
                j = k
                break
        if j < 0:
            valid = [k for k in range(n) if k != i and distinct(s, sentences[k])]
            j = rng.choice(valid) if valid else -1
        if j < 0:
            stuck += 1
            out.append((i, 0))
        else:
            out.append((j, 1))
    if stuck:
        logger.warning("%d of %d sentences have no distinct random next sentence (another tweet, another entity): "
                       "they keep their own next sentence (label 0)", stuck, n)
    return out


def _task_pairs(task: str, s: Sentence, n: Sentence, label: int, i: int, j: int, swapped: bool) -> list[NSPPair]:
    kw = dict(label=label, sentence=i, next=j, swapped=swapped)
    if task == "mixed":
        return [
            NSPPair(s.text, (), None, (n.entity_image,), task="mixed", **kw),
            NSPPair(s.entity_context, (), None, (n.image,), task="mixed", **kw),
        ]
    if task == "text":
        return [NSPPair(s.text, (), n.entity_context, (), task="text", **kw)]
    if task == "multi":
        return [NSPPair(s.text, (s.image,), n.entity_context, (n.entity_image,), task="multi", **kw)]
    raise ValueError(f"unknown pre-training task {task!r}; valid tasks are {list(TASKS)}")


def make_pretraining_pairs(
    sentences: Sequence[Sentence],
    tasks: str | Iterable[str] = TASKS,
    swap_roles: bool = True,
    seed: int = 0,
    negative_draw: str = "distinct",
) -> list[NSPPair]:
    """PFMEL's pre-training pairs (see the module docstring): per task, ``mixed`` 2n (less the pairs whose image side
    has no image: skipped, counted in the log), ``text`` n, ``multi`` n pairs, twice as many with ``swap_roles``. The next sentences are drawn once (seeded) and shared by all tasks;
    ``negative_draw`` chooses how the random next sentence is drawn (see :func:`draw_next_sentences`)."""
    tasks = check_tasks(tasks)
    draws = draw_next_sentences(sentences, seed=seed, negative_draw=negative_draw)
    pairs: list[NSPPair] = []
    for task in tasks:
        for i, (j, label) in enumerate(draws):
            pairs += _task_pairs(task, sentences[i], sentences[j], label, i, j, False)
            if swap_roles:
                pairs += _task_pairs(task, sentences[j], sentences[i], label, j, i, True)
    # A mixed-modal pair pairs text with an image: one whose image side is "no image" (row 0) carries nothing of its
    # image sentence, and the same input can then be drawn with both labels. Such pairs are not built (counted).
    kept = [p for p in pairs if not (p.task == "mixed" and p.text_b is None and not any(p.images_b))]
    if len(kept) < len(pairs):
        logger.info("pre-training: %d mixed-modal pairs skipped (reason: the image side has no image)",
                    len(pairs) - len(kept))
    return kept


__all__ = [
    "TASKS",
    "TASK_ALIASES",
    "check_tasks",
    "Sentence",
    "NSPPair",
    "NEGATIVE_DRAWS",
    "draw_next_sentences",
    "make_pretraining_pairs",
]

"""NIL prediction ("not in the KB"): the simulation protocol, the threshold choice and the NIL metrics.

Protocol (``mel calibrate``): on a dev split whose mentions have gold entities, a seeded fraction (``nil_fraction``,
default 0.2) of the distinct gold entities is removed from the KB; their mentions become out-of-KB (NIL) mentions.
The linker ranks every mention against the reduced KB; each mention's best score decides: below the threshold it
is predicted NIL. The threshold is the one with the best overall accuracy among those that cost the in-KB
mentions at most ``max_in_kb_drop`` (default 0.02) of accuracy against no threshold; ties go to the lower one.

Metrics (:func:`nil_metrics`): ``in_kb_accuracy`` (in-KB mentions whose best candidate is the gold and is not
predicted NIL), ``nil_precision`` / ``nil_recall`` / ``nil_f1`` (NIL predictions against NIL mentions) and
``accuracy`` over all mentions (an in-KB mention is right when its gold is predicted, a NIL mention when NIL is).

A corpus can also label a mention NIL itself (MIMIC's WikiMEL / RichpediaMEL / WikiDiverse answer ``"nil"``): its
``entity_id`` is :data:`NIL_ENTITY_ID` (a string, so every tool keeps it as a labelled mention: ``entity_id`` ``None``
means *unlabelled* to ``mel link`` and ``mel calibrate``). Such a mention is a NIL mention of the NIL metrics beside the
simulated ones, is never in a KB, and counts as a miss (no rank) in the ranking metrics.
"""

from __future__ import annotations

import json
import math
import os
import random
from typing import Any, Iterable, Mapping, Sequence

CALIBRATION_NAME = "nil_calibration.json"

#: ``entity_id`` of a mention labelled NIL by its corpus ("the entity is not in the KB"; see the module docstring).
NIL_ENTITY_ID = "NIL"


def is_nil_gold(entity_id: Any) -> bool:
    """Whether a gold ``entity_id`` is the corpus's NIL label (:data:`NIL_ENTITY_ID`)."""
    return isinstance(entity_id, str) and entity_id == NIL_ENTITY_ID


def check_nil_threshold(value: Any, where: str = "nil_threshold") -> float | None:
    """A NIL threshold as a float, or ``None`` (off); ``ValueError`` naming ``where`` for NaN (every comparison with
    NaN is false: a NaN threshold would silently mean "never NIL"), a bool or a non-number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} must be a number or None (off), got {value!r}")
    if math.isnan(float(value)):
        raise ValueError(f"{where} is NaN, which would mean 'never NIL'; give a number, or 'off' / None to turn it off")
    return float(value)


def removed_entities(
    kb_ids: Iterable[str], gold_ids: Iterable[str | None], fraction: float = 0.2, seed: int = 0
) -> set[str]:
    """The entity ids the protocol removes: a seeded ``fraction`` of the distinct gold ids that are in the KB (the
    same set for ``mel calibrate`` and the evaluation scripts given the same KB, mentions, fraction and seed).
    ``ValueError`` for a fraction outside (0, 1) or no gold entity in the KB."""
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"nil_fraction must be in (0, 1), got {fraction!r}")
    ids = {str(e) for e in kb_ids}
    gold = sorted({str(g) for g in gold_ids if g is not None} & ids)
    if not gold:
        raise ValueError("no mention has a gold entity_id in the KB: NIL calibration needs labelled dev mentions")
    n_removed = max(1, round(len(gold) * float(fraction)))
    return set(random.Random(seed).sample(gold, n_removed))


def simulate_nil(
    kb: Sequence[Mapping[str, Any]], mentions: Sequence[Mapping[str, Any]], fraction: float = 0.2, seed: int = 0
) -> tuple[list[dict], set[str]]:
    """The reduced KB and the removed entity ids (:func:`removed_entities` of the mentions' ``entity_id``)."""
    removed = removed_entities((e["entity_id"] for e in kb), (m.get("entity_id") for m in mentions), fraction, seed)
    return [dict(e) for e in kb if str(e["entity_id"]) not in removed], removed


def nil_metrics(
    best_ids: Sequence[str | None], best_scores: Sequence[float | None], golds: Sequence[str], is_nil: Sequence[bool],
    threshold: float | None,
) -> dict[str, float]:
    """In-KB accuracy, NIL precision / recall / F1 and overall accuracy at ``threshold`` (``None``: never NIL; a
    mention without candidates is always predicted NIL)."""
    n = len(golds)
    predicted_nil = [s is None or (threshold is not None and s < threshold) for s in best_scores]
    in_kb = [i for i in range(n) if not is_nil[i]]
    nil = [i for i in range(n) if is_nil[i]]
    in_kb_right = sum(1 for i in in_kb if not predicted_nil[i] and best_ids[i] == golds[i])
    nil_hits = sum(1 for i in nil if predicted_nil[i])
    n_pred_nil = sum(predicted_nil)
    precision = nil_hits / n_pred_nil if n_pred_nil else 0.0
    recall = nil_hits / len(nil) if nil else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n": n,
        "n_in_kb": len(in_kb),
        "n_nil": len(nil),
        "in_kb_accuracy": in_kb_right / len(in_kb) if in_kb else 0.0,
        "nil_precision": precision,
        "nil_recall": recall,
        "nil_f1": f1,
        "accuracy": (in_kb_right + nil_hits) / n if n else 0.0,
    }


def choose_threshold(
    best_ids: Sequence[str | None], best_scores: Sequence[float | None], golds: Sequence[str], is_nil: Sequence[bool],
    max_in_kb_drop: float = 0.02,
) -> tuple[float | None, dict[str, float]]:
    """The threshold of the protocol (module docstring) and its metrics; ``None`` when no threshold helps.

    One sweep over the mentions sorted by score: raising the threshold past a score turns the mentions at that score
    into NIL predictions, so the counts behind the metrics change incrementally (``O(n log n)``)."""
    if isinstance(max_in_kb_drop, bool) or not isinstance(max_in_kb_drop, (int, float)) or not max_in_kb_drop >= 0:
        raise ValueError(f"max_in_kb_drop must be a number >= 0, got {max_in_kb_drop!r}")
    bad = next((i for i, score in enumerate(best_scores) if score is not None and math.isnan(float(score))), None)
    if bad is not None:
        raise ValueError(f"mention {bad} has a NaN score: the model gives no usable scores, so no NIL threshold can be "
                         "chosen; check the model and its inputs")
    base = nil_metrics(best_ids, best_scores, golds, is_nil, None)
    n = len(golds)
    n_in_kb = sum(1 for x in is_nil if not x)
    right = [not is_nil[i] and best_scores[i] is not None and best_ids[i] == golds[i] for i in range(n)]
    in_kb_right = sum(right)  # in-KB mentions linked right and not (yet) predicted NIL
    nil_hits = sum(1 for i in range(n) if is_nil[i] and best_scores[i] is None)  # no candidate: always NIL
    by_score: dict[float, list[int]] = {}
    for i, score in enumerate(best_scores):
        if score is not None:
            by_score.setdefault(float(score), []).append(i)
    scores = sorted(by_score)
    best_t, best_accuracy = None, base["accuracy"]
    for low, high in zip(scores, scores[1:] + [scores[-1] + 1.0] if scores else []):
        for i in by_score[low]:  # the mentions at `low` fall below any threshold in (low, high)
            in_kb_right -= right[i]
            nil_hits += is_nil[i]
        t = (low + high) / 2.0
        in_kb_accuracy = in_kb_right / n_in_kb if n_in_kb else 0.0
        if base["in_kb_accuracy"] - in_kb_accuracy > max_in_kb_drop + 1e-12:
            break  # a higher threshold only loses more in-KB mentions
        accuracy = (in_kb_right + nil_hits) / n if n else 0.0
        if accuracy > best_accuracy + 1e-12:
            best_t, best_accuracy = t, accuracy
    if best_t is None:
        return None, base
    return best_t, nil_metrics(best_ids, best_scores, golds, is_nil, best_t)


def nil_evaluation(
    ranked: Sequence[Sequence[tuple[str, float]]],
    golds: Sequence[str],
    kb_ids: Iterable[str],
    threshold: float | None,
    fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, Any]:
    """NIL metrics of an evaluation run under the protocol, as flat ``nil_*`` entries of ``eval_results.json``.

    ``ranked[i]``: mention ``i``'s candidates ``(entity_id, score)`` best first, as the evaluation scored them
    against the whole KB; the protocol's removed entities (:func:`removed_entities` of ``golds``) are dropped from
    each list and the best remaining candidate is the linker's answer (the candidate generator is not rerun on
    the reduced KB, unlike ``mel calibrate``: a removed entity's slot is not refilled). ``threshold``: the NIL
    threshold (``None``: never NIL, the uncalibrated linker). A gold labelled NIL by the corpus (:data:`NIL_ENTITY_ID`)
    is a NIL mention too; ``nil_n_mentions`` counts both kinds, ``nil_n_labelled`` the labelled ones."""
    golds = [str(g) for g in golds]
    removed = removed_entities(kb_ids, golds, fraction, seed)
    best_ids: list[str | None] = []
    best_scores: list[float | None] = []
    for row in ranked:
        best = next(((str(e), float(s)) for e, s in row if str(e) not in removed), (None, None))
        best_ids.append(best[0])
        best_scores.append(best[1])
    metrics = nil_metrics(best_ids, best_scores, golds, [g in removed or is_nil_gold(g) for g in golds], threshold)
    out: dict[str, Any] = {"nil_threshold": threshold, "nil_fraction": float(fraction), "nil_seed": int(seed),
                           "nil_removed_entities": len(removed), "nil_n_mentions": metrics["n_nil"],
                           "nil_n_labelled": sum(map(is_nil_gold, golds))}
    out.update(nil_in_kb_accuracy=metrics["in_kb_accuracy"], nil_precision=metrics["nil_precision"],
               nil_recall=metrics["nil_recall"], nil_f1=metrics["nil_f1"], nil_accuracy=metrics["accuracy"])
    return out


NIL_THRESHOLD_HELP = (
    "NIL threshold of the NIL metrics: 'calibrated' (the model's nil_calibration.json, off when there is none), "
    "'off', or a number"
)


def nil_settings(
    directory: str | None, threshold: str | float | None = "calibrated", fraction: float | None = None,
    seed: int | None = None,
) -> tuple[float | None, float, int]:
    """``(threshold, fraction, seed)`` of an evaluation's NIL metrics: ``threshold`` ``"calibrated"`` reads the
    calibration in ``directory``, ``"off"``/``None`` turns NIL off, a number is used as is; ``fraction`` and ``seed``
    default to the calibration's protocol (else 0.2 and 0), so the evaluation removes the entities calibration did
    when it runs on the calibration's split."""
    calibration = load_calibration(directory) or {}
    protocol = calibration.get("protocol") or {}
    if threshold is None or (isinstance(threshold, str) and threshold.strip().lower() in ("off", "none")):
        value = None
    elif isinstance(threshold, str) and threshold.strip().lower() == "calibrated":
        value = calibration.get("threshold")
    else:
        try:
            value = float(threshold)
        except (TypeError, ValueError):
            raise ValueError(f"nil_threshold must be 'calibrated', 'off' or a number, got {threshold!r}") from None
    value = check_nil_threshold(value, "nil_threshold")
    return (value, float(fraction if fraction is not None else protocol.get("nil_fraction", 0.2)),
            int(seed if seed is not None else protocol.get("seed", 0)))


def load_calibration(*directories: str | None) -> dict | None:
    """The first ``nil_calibration.json`` found in ``directories`` (an index folder, then the model folder), or
    ``None``; ``ValueError`` for an unreadable one."""
    for directory in directories:
        if not directory:
            continue
        path = os.path.join(os.fspath(directory), CALIBRATION_NAME)
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    payload = json.load(f)
            except (OSError, ValueError) as err:
                raise ValueError(f"{path} is not a readable NIL calibration ({err}); run `mel calibrate` again") from err
            if not isinstance(payload, dict):
                raise ValueError(f"{path} is not a NIL calibration (a JSON object); run `mel calibrate` again")
            try:
                check_nil_threshold(payload.get("threshold"), f"the threshold in {path}")
            except ValueError as err:
                raise ValueError(f"{err}; run `mel calibrate` again") from None
            return payload
    return None


def save_calibration(directory: str, payload: Mapping[str, Any]) -> str:
    """Write ``nil_calibration.json`` (threshold, protocol, metrics) into ``directory``; returns its path."""
    check_nil_threshold(payload.get("threshold"), "the NIL threshold to save")
    path = os.path.join(directory, CALIBRATION_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(dict(payload), f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    return path


__all__ = [
    "CALIBRATION_NAME", "NIL_ENTITY_ID", "is_nil_gold", "check_nil_threshold", "removed_entities", "simulate_nil", "nil_metrics", "choose_threshold",
    "nil_evaluation", "load_calibration", "save_calibration", "nil_settings", "NIL_THRESHOLD_HELP",
]

"""The cross linker: the one owner of PFMEL pair scoring (an NSP cross-encoder over (mention, entity) pairs).

``pipeline()`` and ``mel link`` (``MultimodalEntityLinkingPipeline``), the PFMEL evaluation
(``pfmel_evaluation.predict_linking``, what ``mel evaluate`` and ``quality.py`` run) and the reranker's calibration all
score pairs through :class:`CrossLinker`:

* pairs are assembled from token ids (each distinct mention side and entity side tokenised once, the entity sides of a
  pipeline cached across calls) by the processor's ``encode_pair`` and its templates (``mention_side`` /
  ``entity_side``, the prompts of training);
* pairs run sorted by length, in batches of one padded width (a multiple of 8) cut by a token budget (at most
  ``pair_batch_size`` pairs and ``pair_batch_size * 64`` padded tokens), under bf16 autocast when asked; a pair's score
  ``model.link_scores(logits)`` (log p(B follows A));
* a pair's score is fused with its first-stage retriever score (``score + weight * retriever score``, the weight
  calibrated at fine-tuning: ``config.retriever_score_weight``), and each mention's candidates are ranked by the
  package's tie rule (score, then KB position: :func:`modeling_mel.ranking.rank_by_score`);
* when only the ``top_k`` best are asked for, pairs that cannot reach them are not scored (:meth:`CrossLinker.link`:
  a log-probability is at most 0, so ``weight * retriever score`` bounds a fused score): the same ``top_k``, with the
  same scores, for fewer forward passes (in two waves, when each mention's ``top_k`` are at most a third of its
  pairs: :data:`PRUNE_FIRST_WAVE`);
* the evaluation, ``mel link`` and ``pipeline()`` batch the same pairs differently (all of a split's pairs at once,
  a batch of mentions, pruning waves), so a pair's score should not depend on its batch: a batch holds pairs of one
  padded width, and no pair is ever padded beyond its own width (under bf16 the padding width changes a score's
  rounding by up to 0.03 on the WikiMEL reranker). The CPU's bf16 matrix kernels also round a row with the number
  of rows below about 512 (on the MiniLM reranker the same pairs in batches of 1 to 16 differed from a batch of 64 by
  up to 4e-3 in 25 of 35 cases, ``benchmarks/bf16_batch_invariance.py``): under bf16 on CPU every forward pass is
  filled to :data:`MIN_BF16_CPU_ROWS` token rows with copies of its first pair (their scores dropped), after which
  none differed. Small requests pay for the fill (a few hundred token rows a width); in float32 nothing is filled,
  and every path ranks alike (``benchmarks/eval_equals_product.py``).
* a model with ``inference_scores`` (``BertForMultimodalNSP``) is run through it: under bf16 a copy of its encoder
  wholly in bf16 (made once), run without autocast, so that no activation is cast between two operations. Where its
  fused bf16 CPU forward runs, each batch stops at its pairs' first-token states (``inference_pair_states``: the
  pooler reads that token alone, so the last layer needs the other tokens only for its keys and values) and the
  states of a whole call are finished together (``inference_state_scores``) in passes of at least
  :data:`MIN_BF16_CPU_ROWS` rows (up to :data:`MAX_TAIL_ROWS` a pass), so that a score still does not depend on its
  batch.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .ranking import rank_by_score

#: padded tokens per pair of the batch budget (a batch holds at most ``pair_batch_size * TOKENS_PER_PAIR`` tokens)
TOKENS_PER_PAIR = 64

#: bf16 on CPU: the fewest token rows (pairs x padded width) a forward pass runs; smaller batches are filled with
#: copies of their first pair. Below about 512 rows the CPU's bf16 matrix kernels round a row differently with the
#: number of rows; from 512 on, a pair's score is bitwise the same in any batch (MiniLM reranker, this project's
#: AMX CPU: 0 of 35 (width, batch size) cases differ from a batch of 64 pairs, 25 of 35 without the fill).
MIN_BF16_CPU_ROWS = 512


#: bf16 on CPU: first-token states (``inference_pair_states``) are finished together once this many have gathered
#: (and at the end of a call); each such pass runs at least :data:`MIN_BF16_CPU_ROWS` rows
MAX_TAIL_ROWS = 8192


#: ``CrossLinker.link`` with ``top_k`` prunes in two waves only when the first (each mention's ``top_k`` candidates of
#: highest bound) holds at most this share of the pairs; else every pair is scored at once. Measured on WikiMEL dev
#: (8.7 candidates a mention, ``benchmarks/two_stage_speed.py``): ``--top_k 1`` (11% of the pairs first) gains from
#: the waves, ``--top_k 5`` (57%) ran slower in two waves than scoring every pair (21.1 against 24.6 mentions/s).
PRUNE_FIRST_WAVE = 1 / 3


def padded_width(length: int) -> int:
    """A pair's padded width: its length rounded up to a multiple of 8 (one width per batch)."""
    return -(-int(length) // 8) * 8


class CrossLinker:
    """Scores (mention, entity) pairs with an NSP cross-encoder and ranks each mention's candidates.

    Args:
        model: a model with ``link_scores(logits)`` (``BertForMultimodalNSP``).
        processor: its ``MultimodalNSPProcessor`` (``encode_pair``, ``pad``, the templates).
        device: where the model runs (default: the model's device).
        bf16: bf16 autocast for the pair forward passes.
        pair_batch_size: most pairs per forward pass (and ``pair_batch_size * 64`` padded tokens).
        max_length: pair length in tokens (default: the processor's).
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        device: Any = None,
        bf16: bool = False,
        pair_batch_size: int = 64,
        max_length: int | None = None,
    ) -> None:
        if int(pair_batch_size) < 1:
            raise ValueError(f"pair_batch_size must be >= 1, got {pair_batch_size!r}")
        self.model = model
        self.processor = processor
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.bf16 = bool(bf16)
        self.pair_batch_size = int(pair_batch_size)
        self.max_length = int(max_length) if max_length else None
        self._entity_ids: dict[Any, list[int]] = {}
        self._mention_ids: tuple[tuple[str, ...], list[list[int]]] = ((), [])

    @property
    def weight(self) -> float:
        """The weight of the retriever score in the fused score (``config.retriever_score_weight``, 0 when absent)."""
        return float(getattr(self.model.config, "retriever_score_weight", 0.0) or 0.0)

    # -- batching and scoring -------------------------------------------------------------------------------------
    def batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices of pairs in batches: sorted by length (ascending), each batch of pairs of one padded width (the
        length rounded up to a multiple of 8), at most ``pair_batch_size`` pairs and ``pair_batch_size * 64`` padded
        tokens. One width per batch: no pair is padded beyond its own width, so its score does not depend on the
        other pairs of the request (bf16 rounding changes with the padding)."""
        order = sorted(range(len(lengths)), key=lambda j: lengths[j])
        budget = self.pair_batch_size * TOKENS_PER_PAIR
        out: list[list[int]] = []
        last_width = None
        for j in order:
            width = padded_width(lengths[j])
            if out and width == last_width and len(out[-1]) < self.pair_batch_size and (len(out[-1]) + 1) * width <= budget:
                out[-1].append(j)
            else:
                out.append([j])
            last_width = width
        return out

    def _filled(self) -> bool:
        """bf16 on CPU: forward passes are filled to :data:`MIN_BF16_CPU_ROWS` rows."""
        return self.bf16 and self.device.type == "cpu"

    def _fill(self, pairs: int, length: int) -> int:
        """Copies of a batch's first pair that bring it to :data:`MIN_BF16_CPU_ROWS` token rows (bf16 on CPU only)."""
        if not self._filled():
            return 0
        return max(0, -(-MIN_BF16_CPU_ROWS // padded_width(length)) - pairs)

    def score_features(
        self, features: Sequence[Mapping[str, Any]], collate: Callable[[list], Mapping[str, Any]] | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """``model.link_scores`` (float32, CPU, input order) of encoded pairs (``input_ids``, ``token_type_ids``,
        ``attention_mask``, optional ``image_features``); ``collate`` pads a list of them into model inputs (default:
        the processor's ``pad`` to a multiple of 8). Keys the model does not take (``labels``, ``task_ids``) are
        dropped."""
        collate = collate or (lambda feats: self.processor.pad(feats, return_tensors="pt", pad_to_multiple_of=8))
        scores = torch.empty(len(features))
        batches = self.batches([len(f["input_ids"]) for f in features])
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="scoring candidates", unit="batch")
        fast = getattr(self.model, "inference_scores", None)  # BertForMultimodalNSP's inference path
        # bf16 on CPU: each batch stops at its pairs' first-token states (the rest of the last layer reads that
        # token alone) and every state of the call is finished in one pass, filled to the row floor
        split = getattr(self.model, "inference_pair_states", None) if self._filled() else None
        states: list[torch.Tensor] = []
        state_rows: list[int] = []

        def finish() -> None:  # the states so far, in one pass of at least MIN_BF16_CPU_ROWS rows
            if states:
                stacked = torch.cat(states)
                n = stacked.shape[0]
                if n < MIN_BF16_CPU_ROWS:
                    stacked = torch.cat([stacked, stacked[:1].expand(MIN_BF16_CPU_ROWS - n, -1)])
                out = self.model.inference_state_scores(stacked, torch.bfloat16)
                scores[torch.tensor(state_rows)] = out.float().cpu()[:n]
                states.clear()
                state_rows.clear()

        was_training = self.model.training
        self.model.eval()
        try:
            for idx in batches:
                chosen = [features[j] for j in idx]
                fill = self._fill(len(chosen), len(chosen[0]["input_ids"]))
                batch = dict(collate(chosen + [chosen[0]] * fill))
                batch.pop("labels", None)
                batch.pop("task_ids", None)
                batch = {k: v.to(self.device) for k, v in batch.items()}
                if split is not None:
                    state = split(**batch, autocast_dtype=torch.bfloat16)
                    if state is not None:
                        states.append(state[: len(idx)])
                        state_rows += idx
                        if len(state_rows) >= MAX_TAIL_ROWS:
                            finish()
                        continue
                    split = None  # this model or CPU has no split path: whole batches from here on
                if fast is not None:
                    out = fast(**batch, autocast_dtype=torch.bfloat16 if self.bf16 else None)
                else:
                    with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                        out = self.model.link_scores(self.model(**batch).logits)
                scores[torch.tensor(idx)] = out.float().cpu()[: len(idx)]
            finish()
        finally:
            self.model.train(was_training)
        return scores

    # -- pairs from texts -----------------------------------------------------------------------------------------
    def _token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(ids) for ids in self.processor.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def entity_token_ids(self, keys: Sequence[Any], side: Callable[[Any], str]) -> dict[Any, list[int]]:
        """Token ids of the entity side of each key (``side(key)``: its text), tokenised once per linker."""
        new = [k for k in dict.fromkeys(keys) if k not in self._entity_ids]
        for k, ids in zip(new, self._token_ids([side(k) for k in new])):
            self._entity_ids[k] = ids
        return {k: self._entity_ids[k] for k in keys}

    def pair_features(
        self,
        mention_sides: Sequence[str],
        pairs: Sequence[tuple[int, Any]],
        entity_side: Callable[[Any], str],
        mention_images: Sequence[np.ndarray | None] | None = None,
        entity_image: Callable[[Any], np.ndarray | None] | None = None,
    ) -> list[dict]:
        """Encoded pairs ``(mention i, entity key)``: sentence A the mention side ``mention_sides[i]`` (+ its image),
        sentence B ``entity_side(key)`` (+ ``entity_image(key)``), truncated as in training (``encode_pair``)."""
        max_length = int(self.max_length or self.processor.max_length)
        sides = tuple(mention_sides)
        if self._mention_ids[0] != sides:  # the waves of one batch (CrossLinker.link) share the mention sides
            self._mention_ids = (sides, self._token_ids(list(sides)))
        ids_a = self._mention_ids[1]
        ids_b = self.entity_token_ids([key for _, key in pairs], entity_side)
        images_b: dict[Any, np.ndarray | None] = {}
        features = []
        for i, key in pairs:
            img_a = mention_images[i] if mention_images is not None else None
            if entity_image is not None and key not in images_b:
                images_b[key] = entity_image(key)
            img_b = images_b.get(key)
            n_a, n_b = int(img_a is not None), int(img_b is not None)
            input_ids, type_ids = self.processor.encode_pair(ids_a[i], ids_b[key], n_a, n_b, max_length)
            feat = {"input_ids": input_ids, "token_type_ids": type_ids, "attention_mask": [1] * len(input_ids)}
            if n_a or n_b:
                feat["image_features"] = np.stack([np.asarray(x, np.float32).reshape(-1) for x in (img_a, img_b)
                                                   if x is not None])
            features.append(feat)
        return features

    # -- ranking --------------------------------------------------------------------------------------------------
    def link(
        self,
        candidates: Sequence[Sequence[int]],
        score_pairs: Callable[[list[tuple[int, int]]], torch.Tensor],
        first_stage: Sequence[Mapping[int, float]] | None = None,
        top_k: int | None = None,
        weight: float | None = None,
    ) -> list[list[tuple[int, float]]]:
        """Each mention's ranked candidates (KB positions, duplicates once); ``score_pairs([(mention index, position),
        ...])`` scores pairs (through :meth:`score_features`, so in the linker's precision).

        Without ``top_k`` (or without a first stage to fuse) every pair is scored and every candidate ranked. With
        ``top_k`` and a positive fusion weight only the exact ``top_k`` is returned, and pairs that cannot reach it are
        never scored: a pair's score is a log-probability (at most 0), so a candidate's fused score is at most
        ``weight * retriever score``. The ``top_k`` candidates of highest bound are scored first; a remaining
        candidate whose bound is below the ``top_k``-th best fused score found is left out (it can only rank lower),
        the others are scored too. That second wave holds few pairs of each width, so it pays only when the first
        wave is small: when the ``top_k`` of every mention make more than :data:`PRUNE_FIRST_WAVE` of the pairs,
        every pair is scored in one wave. The returned scores and order are those of scoring every pair (a pair's
        score does not depend on its batch: :meth:`batches`)."""
        weight = self.weight if weight is None else float(weight)
        rows = [list(dict.fromkeys(row)) for row in candidates]
        prior = [{p: weight * first_stage[i].get(p, 0.0) if first_stage is not None and weight else 0.0 for p in row}
                 for i, row in enumerate(rows)]
        fused: list[dict[int, float]] = [{} for _ in rows]

        def score(pairs: list[tuple[int, int]]) -> None:
            if pairs:
                for (i, p), s in zip(pairs, score_pairs(pairs).tolist()):
                    fused[i][p] = s + prior[i][p]

        first_wave = sum(min(int(top_k), len(row)) for row in rows) if top_k is not None else 0
        if top_k is None or first_stage is None or weight <= 0 or first_wave > PRUNE_FIRST_WAVE * sum(map(len, rows)):
            score([(i, p) for i, row in enumerate(rows) for p in row])
        else:
            k = int(top_k)
            order = [sorted(row, key=lambda p, b=b: (-b[p], p)) for row, b in zip(rows, prior)]
            score([(i, p) for i, row in enumerate(order) for p in row[:k]])
            rest = []
            for i, row in enumerate(order):
                if len(row) > k:
                    threshold = sorted(fused[i].values(), reverse=True)[k - 1]  # the k-th best so far: a lower bound
                    rest += [(i, p) for p in row[k:] if prior[i][p] >= threshold]
            score(rest)
        ranked = [rank_by_score(list(f), list(f.values())) for f in fused]
        return ranked if top_k is None else [row[: int(top_k)] for row in ranked]

    def rank(
        self,
        candidates: Sequence[Sequence[int]],
        scores: Sequence[float] | torch.Tensor,
        first_stage: Sequence[Mapping[int, float]] | None = None,
        weight: float | None = None,
    ) -> list[list[tuple[int, float]]]:
        """Each mention's candidates (KB positions) ranked by their pair scores (flat, mention after mention), plus
        ``weight`` (default :attr:`weight`) times the first-stage score when ``first_stage`` is given; ties by KB
        position: :meth:`link` over scores already computed (one fusion and tie rule)."""
        flat = scores.tolist() if hasattr(scores, "tolist") else list(scores)
        index: dict[tuple[int, int], int] = {}  # (mention, position) -> its score in ``flat`` (first occurrence)
        offset = 0
        for i, row in enumerate(candidates):
            for j, p in enumerate(row):
                index.setdefault((i, p), offset + j)
            offset += len(row)
        return self.link(candidates, lambda pairs: torch.tensor([flat[index[q]] for q in pairs], dtype=torch.float64),
                         first_stage, weight=weight)


__all__ = ["CrossLinker", "MAX_TAIL_ROWS", "MIN_BF16_CPU_ROWS", "PRUNE_FIRST_WAVE", "TOKENS_PER_PAIR"]

"""PFMEL throughput: BertForMultimodalNSP against plain BertForNextSentencePrediction, and padding.

1. Overhead of the image slot: training and inference pairs/s of ``BertForMultimodalNSP`` (two image
   tokens per pair) against ``BertForNextSentencePrediction`` with the same weights on the same token
   counts (the image tokens replaced by text tokens). Ratio = time(multimodal) / time(plain).
2. Padding: fixed padding to 300 tokens (the paper's max length) against dynamic padding with
   length-grouped batches, on tweet-length PFMEL pairs built with the paper's templates (the
   pre-training task mix and the fine-tuning pairs). Ratio = time(fixed) / time(dynamic).

    python benchmarks/pfmel_throughput.py --quick
"""

from __future__ import annotations

import random

import numpy as np
import torch
from common import base_parser, markdown_table, setup_threads, timeit, timeit_pair, write_results
from transformers import BertConfig, BertForNextSentencePrediction

from modeling_mel import BertForMultimodalNSP, MultimodalNSPConfig, MultimodalNSPProcessor, entity_context, entity_prompt, mention_prompt
from modeling_mel.backbones import load_backbone_config, load_tokenizer

WORDS = (
    "game tonight great win team season fans love new video watch live show music album tour city "
    "news today match goal player coach week best time happy day year first back home world big night"
).split()


def tweet(rng: random.Random, lo: int = 8, hi: int = 28) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def pfmel_pairs(n: int, seed: int = 0, workload: str = "mix") -> list[tuple[str | None, str | None, int, int]]:
    """Pairs as PFMEL builds them: (text A, text B, images in A, images in B).

    ``workload="tweets"``: tweet-length pairs, a tweet and an image (the mixed-modal pre-training
    pairs text | entity image). ``"mix"``: an eighth of each pre-training kind (mixed text|entity-image,
    mixed context|image, text-only, multimodal), the other half fine-tuning pairs with the full
    entity context, texts drawn from tweet-like word counts.
    """
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        text = tweet(rng)
        if workload == "tweets":
            pairs.append((text, None, 1, 1) if i % 2 else (text, None, 0, 1))
            continue
        profile = {"screen_name": f"user{i}", "name": "first last", "location": "some city",
                   "description": tweet(rng, 4, 30)}
        ctx = entity_context(profile, [tweet(rng, 6, 35) for _ in range(rng.randint(1, 5))])
        kind = i % 8
        if kind == 0:
            pairs.append((text, None, 0, 1))
        elif kind == 1:
            pairs.append((ctx, None, 0, 1))
        elif kind == 2:
            pairs.append((text, ctx, 0, 0))
        elif kind == 3:
            pairs.append((text, ctx, 1, 1))
        else:
            mention = text.split()[0]
            pairs.append((mention_prompt(text, mention), entity_prompt(f"user{i}", ctx), 1, 1))
    return pairs


def encode(processor: MultimodalNSPProcessor, pairs, dim: int) -> list[dict]:
    feats = processor(
        [p[0] for p in pairs], [p[1] for p in pairs],
        images=[np.ones((p[2], dim), np.float32) if p[2] else None for p in pairs],
        images_pair=[np.ones((p[3], dim), np.float32) if p[3] else None for p in pairs],
        padding=False, return_tensors=None,
    )
    return feats


def batches(processor, feats: list[dict], batch_size: int, fixed: int | None) -> list[dict]:
    """Fixed: batches in corpus order padded to ``fixed``; dynamic: length-grouped, padded to the longest."""
    order = list(range(len(feats)))
    if fixed is None:
        order.sort(key=lambda i: len(feats[i]["input_ids"]))
    out = []
    for s in range(0, len(order), batch_size):
        chunk = [feats[i] for i in order[s : s + batch_size]]
        out.append(processor.pad(chunk, pad_to_multiple_of=fixed) if fixed else processor.pad(chunk))
    return out


def run_batches(model, data: list[dict], train: bool) -> None:
    if train:
        opt = torch.optim.AdamW(model.parameters(), lr=5e-6)
        model.train()
        for b in data:
            out = model(**b, labels=torch.zeros(b["input_ids"].shape[0], dtype=torch.long))
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        model.eval()
        with torch.inference_mode():
            for b in data:
                model(**b)


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["minilm", "bert-base"], nargs="+", default=None,
                        help="model sizes (default: minilm with --quick, both otherwise)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--n_pairs", type=int, default=None)
    parser.add_argument("--tiny", action="store_true",
                        help="tiny random BERT (hidden 32, 2 layers) instead of the named sizes: the same code paths, for tests")
    args = parser.parse_args(argv)
    setup_threads(args.threads)
    sizes = args.size or (["minilm"] if args.quick else ["minilm", "bert-base"])
    repeats = args.repeats or (3 if args.quick else 5)
    n_pairs = args.n_pairs or (48 if args.quick else 256)
    tokenizer = load_tokenizer("minilm")
    rows_overhead, rows_padding = [], []
    for size in sizes:
        base = load_backbone_config("minilm").to_dict()
        if size == "bert-base":
            base.update(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
        if args.tiny:
            base.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
        base.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        for key in ("architectures", "model_type", "transformers_version", "auto_map"):
            base.pop(key, None)
        torch.manual_seed(0)
        processor = MultimodalNSPProcessor(tokenizer, max_length=300, image_feature_dim=2048)
        mm = BertForMultimodalNSP(MultimodalNSPConfig(**base, image_feature_dim=2048))
        processor.configure_model(mm)
        plain = BertForNextSentencePrediction(BertConfig(**base))
        plain.load_state_dict(mm.state_dict(), strict=False)

        # 1. overhead at equal token counts: (B, 128) with two image tokens per pair.
        b, t = args.batch_size, 128
        ids = torch.randint(1000, 2000, (b, t))
        ids[:, 0], ids[:, 60], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.sep_token_id
        types = torch.zeros_like(ids)
        types[:, 61:] = 1
        mm_ids = ids.clone()
        mm_ids[:, 59] = mm_ids[:, 126] = processor.image_placeholder_id
        mm_batch = {"input_ids": mm_ids, "token_type_ids": types, "attention_mask": torch.ones_like(ids),
                    "image_features": torch.randn(b, 2, 2048)}
        plain_batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": torch.ones_like(ids)}
        for mode in ("inference", "training"):
            train = mode == "training"
            t_mm, t_plain = timeit_pair(lambda: run_batches(mm, [mm_batch], train),
                                        lambda: run_batches(plain, [plain_batch], train), repeats=repeats + 2)
            rows_overhead.append({"size": size, "mode": mode, "tokens/pair": t,
                                  "multimodal pairs/s": b / t_mm, "plain NSP pairs/s": b / t_plain,
                                  "overhead (mm/plain)": t_mm / t_plain})
            print(rows_overhead[-1], flush=True)

        # 2. fixed padding to 300 against dynamic, length-grouped padding.
        for workload, mode in (("tweets", "inference"), ("tweets", "training"), ("mix", "inference"), ("mix", "training")):
            feats = encode(processor, pfmel_pairs(n_pairs, workload=workload), 2048)
            lengths = [len(f["input_ids"]) for f in feats]
            fixed = batches(processor, feats, args.batch_size, fixed=300)
            dynamic = batches(processor, feats, args.batch_size, fixed=None)
            train = mode == "training"
            # the model is warm from part 1; one untimed pass per workload in full runs
            warm = 0 if args.quick else 1
            t_fixed, t_dyn = timeit_pair(lambda: run_batches(mm, fixed, train), lambda: run_batches(mm, dynamic, train),
                                         repeats=max(1, repeats - 2), warmup=warm)
            rows_padding.append({"size": size, "workload": workload, "mode": mode, "pairs": n_pairs,
                                 "mean tokens": float(np.mean(lengths)), "max tokens": int(max(lengths)),
                                 "fixed-300 pairs/s": n_pairs / t_fixed, "dynamic pairs/s": n_pairs / t_dyn,
                                 "speed-up (fixed/dynamic)": t_fixed / t_dyn})
            print(rows_padding[-1], flush=True)

    tables = {"Image-slot overhead at equal token counts (target <= 1.05)": markdown_table(rows_overhead),
              "Fixed padding to 300 vs dynamic length-grouped padding (target >= 3 on tweets)": markdown_table(rows_padding)}
    for title, table in tables.items():
        print(f"\n{title}\n{table}")
    payload = {"overhead": rows_overhead, "padding": rows_padding,
               "targets": {"overhead_max": 1.05, "padding_speedup_min": 3.0}}
    path = write_results("pfmel_throughput", payload, tables, args.out_dir, args.quick)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()

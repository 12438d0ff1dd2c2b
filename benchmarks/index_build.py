"""Entity-index building: entities/s of the ZEMEL candidate encoder against sentence-transformers' ``encode``.

Text-only KB entities (name + description of 8-40 words) are encoded into candidate vectors:

* ``sentence-transformers``: ``SentenceTransformer(<embedded MiniLM dir>).encode(texts, batch_size=32)`` of the same
  MiniLM weights (fp32; it sorts by length itself), ``max_seq_length`` set to ZEMEL's 64 so both see the same tokens.
* ``zemel naive``: ``processor.encode_candidates`` + ``model.encode_candidates`` per batch of 32 in KB order, fp32,
  ``torch.no_grad`` (per-candidate tokenisation, padding to the longest of an unsorted batch).
* ``zemel fast-fp32`` / ``zemel fast``: one batched tokenisation (``processor.tokenize_candidates``, cacheable), then
  ``model.fast_encode_candidates`` (length-sorted batches of 64 cut to their longest, ``torch.inference_mode``),
  in fp32 / under bf16 autocast.
* ``mel index path``: ``EntityIndex.build`` as ``mel index`` runs it (the product KB encoder ``encode_entities``:
  the fast path above, bf16 where ``bf16_is_fast``, then a flat FAISS index); the target is measured on it.

The ZEMEL text stream is the embedded MiniLM (``from_text_backbone("minilm")``; text-only entities skip the visual
stream). All paths are timed interleaved in one run (median); the tokenisation is inside every timed path. The bf16
accuracy cost is the cosine similarity of the fast vectors to the fp32 reference vectors.

    python benchmarks/index_build.py --quick
"""

from __future__ import annotations

import torch
from common import base_parser, markdown_table, setup_threads, write_results
from synthetic import entities, timeit_many, zemel_model

from modeling_mel import ZemelProcessor
from modeling_mel.entity_index import EntityIndex
from modeling_mel.hardware import bf16_is_fast
from modeling_mel.backbones import load_tokenizer, resolve_backbone

TARGETS = {"fast_over_sentence_transformers_min": 3.0}
PRODUCT = "mel index path: EntityIndex.build (encode_entities, bf16 where fast, + flat FAISS)"


def zemel_naive(model, processor, names, descriptions, batch_size: int = 32) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for s in range(0, len(names), batch_size):
            enc = processor.encode_candidates(names[s : s + batch_size], descriptions[s : s + batch_size], max_length=64)
            out.append(model.encode_candidates(**enc))
    return torch.cat(out)


def zemel_fast(model, processor, names, descriptions, dtype=torch.bfloat16, batch_size: int = 64) -> torch.Tensor:
    ids = processor.tokenize_candidates(names, descriptions, max_length=64)
    return model.fast_encode_candidates(ids, batch_size=batch_size, autocast_dtype=dtype)


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--n_entities", type=int, default=None, help="entities encoded (default 256 quick, 2000 full)")
    parser.add_argument("--tiny", action="store_true", help="32 entities, 1 repeat (tests: same code paths)")
    parser.add_argument("--batch_size", type=int, default=64, help="batch size of the fast ZEMEL path")
    args = parser.parse_args(argv)
    setup_threads(args.threads)
    n = args.n_entities or (32 if args.tiny else 256 if args.quick else 2000)
    repeats = args.repeats or (1 if args.tiny else 3)

    from sentence_transformers import SentenceTransformer

    kb = entities(n, seed=7)
    names, descriptions = [e["name"] for e in kb], [e["description"] for e in kb]
    st_texts = [f"{e['name']}. {e['description']}" for e in kb]
    st = SentenceTransformer(resolve_backbone("minilm"), device="cpu")
    st.max_seq_length = 64
    processor = ZemelProcessor(load_tokenizer("minilm"))
    model = zemel_model("minilm", processor)
    tokens = [len(r) for r in processor.tokenize_candidates(names, descriptions, max_length=64)]
    bf16 = bf16_is_fast("cpu")  # what `mel index` chooses on this machine

    fns = {
        "sentence-transformers encode (fp32)": lambda: st.encode(st_texts, batch_size=32, convert_to_numpy=True),
        "zemel naive (fp32, per-batch tokenisation, unsorted)": lambda: zemel_naive(model, processor, names, descriptions),
        "zemel fast-fp32 (batched tokenisation, sorted, inference_mode)":
            lambda: zemel_fast(model, processor, names, descriptions, None, args.batch_size),
        "zemel fast (+ bf16 autocast)": lambda: zemel_fast(model, processor, names, descriptions, torch.bfloat16, args.batch_size),
        PRODUCT: lambda: EntityIndex.build(model, processor, kb, batch_size=args.batch_size, index_type="flat",
                                           progress=False, bf16=bf16),
    }
    times = timeit_many(fns, repeats=repeats, warmup=1)
    st_t = times["sentence-transformers encode (fp32)"]
    naive_t = times["zemel naive (fp32, per-batch tokenisation, unsorted)"]
    rows = [{"path": name, "entities": n, "entities/s": n / t, "speed vs sentence-transformers": st_t / t,
             "speed vs zemel naive": naive_t / t} for name, t in times.items()]
    fast_t = times["zemel fast (+ bf16 autocast)"]
    ratios = {"product_over_sentence_transformers": st_t / times[PRODUCT],
              "product_over_fast": fast_t / times[PRODUCT],
              "fast_over_sentence_transformers": st_t / fast_t,
              "fast_fp32_over_sentence_transformers": st_t / times["zemel fast-fp32 (batched tokenisation, sorted, inference_mode)"],
              "naive_over_sentence_transformers": st_t / naive_t,
              "fast_over_naive": naive_t / fast_t}

    ref = zemel_naive(model, processor, names, descriptions)
    fast = zemel_fast(model, processor, names, descriptions, torch.bfloat16, args.batch_size)
    fast32 = zemel_fast(model, processor, names, descriptions, None, args.batch_size)
    cos = torch.nn.functional.cosine_similarity(fast, ref)
    accuracy = {"bf16_cosine_min": float(cos.min()), "bf16_cosine_mean": float(cos.mean()),
                "bf16_max_abs_diff": float((fast - ref).abs().max()),
                "fast_fp32_max_abs_diff": float((fast32 - ref).abs().max())}
    product = torch.from_numpy(EntityIndex.build(model, processor, kb, batch_size=args.batch_size, index_type="flat",
                                                 progress=False, bf16=bf16).vectors)
    pcos = torch.nn.functional.cosine_similarity(product, ref)
    accuracy["product_cosine_min"] = float(pcos.min())
    targets = [{"target": "mel index (EntityIndex.build) >= 3x sentence-transformers encode",
                "measured": ratios["product_over_sentence_transformers"],
                "met": ratios["product_over_sentence_transformers"] >= TARGETS["fast_over_sentence_transformers_min"]}]
    tables = {f"Index building, {n} text-only entities ({sum(tokens) / n:.0f} tokens on average, max 64), "
              "interleaved median": markdown_table(rows),
              "Accuracy of the fast paths against the fp32 reference vectors": markdown_table([accuracy]),
              "Targets": markdown_table(targets)}
    for title, table in tables.items():
        print(f"\n{title}\n{table}")
    payload = {"rows": rows, "ratios": ratios, "accuracy": accuracy, "targets": TARGETS, "target_check": targets,
               "n_entities": n, "mean_tokens": sum(tokens) / n}
    path = write_results("index_build" + ("_tiny" if args.tiny else ""), payload, tables, args.out_dir, args.quick)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()

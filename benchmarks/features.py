"""ResNet-50 image features: images/s one at a time, batched, and from the content-hash cache.

    python benchmarks/features.py --quick
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
from common import base_parser, markdown_table, setup_threads, timeit, write_results
from PIL import Image

from modeling_mel.image_encoders import tiny_resnet_config
from modeling_mel.image_features import ImageFeatureExtractor


def make_images(directory: str, n: int, size: int = 320) -> list[str]:
    """``n`` random-texture JPEGs of ``size`` x ``size`` pixels (typical tweet photos are larger)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        arr = (rng.random((size, size, 3)) * 255).astype(np.uint8)
        path = os.path.join(directory, f"{i}.jpg")
        Image.fromarray(arr).save(path, quality=85)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--n_images", type=int, default=None)
    parser.add_argument("--image_size", type=int, default=224, help="network input side (224 as in the papers)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--tiny", action="store_true", help="tiny random ResNet (same code paths), for tests")
    parser.add_argument("--image_model", default="microsoft/resnet-50",
                        help="image encoder (checkpoint, or random:resnet-50 for a timing without the weights: an "
                             "unloadable checkpoint is an error, never a silent random fallback)")
    args = parser.parse_args(argv)
    setup_threads(args.threads)
    n = args.n_images or (32 if args.quick else 128)
    extra = {"config": tiny_resnet_config()} if args.tiny else {"model_name_or_path": args.image_model}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(tmp, n)
        one = ImageFeatureExtractor(batch_size=1, image_size=args.image_size, device=args.device, **extra)
        one.encode(paths[:2])  # warm-up
        sub = paths[: max(4, n // 4)]
        t_one = timeit(lambda: encode_uncached(one, sub), repeats=1, warmup=0)
        batched = ImageFeatureExtractor(batch_size=args.batch_size, image_size=args.image_size,
                                        cache_dir=os.path.join(tmp, "cache"), device=args.device, **extra)
        t_batched = timeit(lambda: encode_uncached(batched, paths), repeats=1, warmup=0)
        t_memory = timeit(lambda: batched.encode(paths), repeats=3, warmup=0)
        disk = ImageFeatureExtractor(batch_size=args.batch_size, image_size=args.image_size,
                                     cache_dir=os.path.join(tmp, "cache"), device=args.device, **extra)
        t_disk = timeit(lambda: encode_uncached(disk, paths), repeats=3, warmup=0)
        rows = [
            {"path": "encode, batch 1", "images": len(sub), "images/s": len(sub) / t_one, "ratio vs batch 1": 1.0},
            {"path": f"encode, batch {args.batch_size}", "images": n, "images/s": n / t_batched,
             "ratio vs batch 1": (n / t_batched) / (len(sub) / t_one)},
            {"path": "cache hit (memory)", "images": n, "images/s": n / t_memory,
             "ratio vs batch 1": (n / t_memory) / (len(sub) / t_one)},
            {"path": "cache hit (disk, new process state)", "images": n, "images/s": n / t_disk,
             "ratio vs batch 1": (n / t_disk) / (len(sub) / t_one)},
        ]
        pretrained = batched.pretrained
    table = markdown_table(rows)
    print(table)
    title = f"ResNet-50 features at {args.image_size}px ({'pretrained' if pretrained else 'random-init'} weights)"
    path = write_results("features", {"rows": rows, "image_size": args.image_size}, {title: table}, args.out_dir, args.quick)
    print(f"\nwrote {path}")
    return {"rows": rows}


def encode_uncached(extractor: ImageFeatureExtractor, paths: list[str]) -> np.ndarray:
    """Encode after forgetting the in-memory cache (the disk cache, if any, still answers)."""
    extractor._memory.clear()
    return extractor.encode(paths)


if __name__ == "__main__":
    main()

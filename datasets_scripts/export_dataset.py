"""Build a MEL corpus and export it as a code-free Hub dataset (Parquet with embedded images + card).

    python datasets_scripts/export_dataset.py --dataset twitter_mel --data_dir raw/ --out hub_export/
    python datasets_scripts/export_dataset.py --dataset mel_jsonl --data_dir corpus/ --out hub_export/ \
        --push_to_hub user/my-mel-corpus

Then ``datasets.load_dataset("hub_export/", "mentions")`` (or the repo id) needs no code.
The implementation is :func:`modeling_mel.hub_dataset.export_main` (also the ``mel export-dataset``
subcommand).
"""

from __future__ import annotations

import sys

from modeling_mel.hub_dataset import export_main

if __name__ == "__main__":
    sys.exit(export_main(sys.argv[1:], prog="export_dataset.py"))

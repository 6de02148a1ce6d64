"""Evaluate a fine-tuned checkpoint from Python: the library calls behind `ilora-export eval`.

python examples/evaluate_checkpoint.py runs/lastfm-smollm2/ckpt ../shared/ilora-ref/data/lastfm --limit 16
"""

import argparse

from ilora_export import load_checkpoint
from ilora_export.data.evalset import build_eval_set
from ilora_export.data.llara import load_dataset
from ilora_export.eval.answers import evaluate_model

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("checkpoint")
parser.add_argument("data")
parser.add_argument("--split", default="test")
parser.add_argument("--limit", type=int, default=None)
args = parser.parse_args()

loaded = load_checkpoint(args.checkpoint)  # validates hashes, base model, adapter shapes
evalset = build_eval_set(load_dataset(args.data), args.split, seed=0)  # target + 19 seeded negatives per row
evalset.rows = evalset.rows[: args.limit]
result = evaluate_model(loaded, evalset, batch_size=8)

for record in result.records[:5]:
    print(f"{record['target']!r:40} <- {record['answer']!r}")
s = result.summary
print(
    f"ValidRatio {s['valid_ratio']:.4f}  HitRatio@1 {s['hit_ratio@1_of_valid']:.4f} (of valid), "
    f"{s['hit_ratio@1_of_total']:.4f} (of total)  SASRec {s['sasrec_hit_ratio@1']:.4f}"
)

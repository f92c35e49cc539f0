#!/bin/bash
# longer extraction (3 x 2050 policy steps) from the same critics stage, one task each, in parallel
cd /work/wt/drcorl
for spec in "BallRun 10" "CarCircle 10"; do
  set -- $spec
  env PYTHONPATH=/tmp/drc/snap /work/main/.venv/bin/python -c "
import torch, time, sys
torch.set_num_threads(1)
from safepolicy.training.loop import TrainRequest, train
from pathlib import Path
t=time.perf_counter()
train(TrainRequest(algorithm='drcorl', task='$1', dataset=Path('data/$1.h5'), cost_limit=float($2),
      out=Path('runs/diag-$1-$2-long'), seed=0, steps=None, overrides={'run.eval_episodes': '10',
      'run.precision': 'bf16-mixed', 'behaviour_steps': '5000', 'critics_steps': '8000', 'tau': '0.05',
      'policy_steps': '6150'}, reuse_stages={'critics': Path('runs/quality-drcorl/$1-drcorl-5-s0')},
      progress=False))
print('$1', $2, time.perf_counter()-t)
" > runs/diag-$1.log 2>&1 &
done
wait

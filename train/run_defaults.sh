#!/bin/sh
# Train tie-lite's three default models sequentially, one thread each (nice 19).
# Usage: sh train/run_defaults.sh [OUT_ROOT]   (default /work/ckpt); logs in OUT_ROOT/<name>.log
# PYTHON: interpreter (default python). WAIT_PID: wait for that process first.
# START_AT: skip the stages before this one (A1, A2, A3, A, B, C).
#
# History of model A (warm starts with --init_from, fresh optimizer each stage): the task was made
# easier twice while A trained, so its early stages ran on earlier variants of task.py:
#   A1 (1600 steps): 2 ops, operands 2-50, multiplier 2-9 on values <= 30, results <= 300
#   A2 (1358 steps, stopped by --max_minutes): 2 ops, operands 2-25, mult. on values <= 25, results <= 225
#   A3 (killed after its step-400 checkpoint): same as A2
#   A  (final): the task as it is now in task.py. B and C trained from scratch on it.
# Rerunning A1-A3 with today's task.py trains them on the current task instead.
set -e
OUT=${1:-/work/ckpt}
HERE=$(dirname "$0")
PY=${PYTHON:-python}
COMMON="--batch 32 --n_train 40000 --keep_snapshots"
ARCH_A="--arch modernbert --tokenizer char --hidden 128 --layers 4 --heads 4 --intermediate 384"
mkdir -p "$OUT"
if [ -n "$WAIT_PID" ]; then while kill -0 "$WAIT_PID" 2>/dev/null; do sleep 5; done; fi
run() { # name, args...
  name=$1; shift
  nice -n 19 $PY "$HERE/train_mdlm.py" --out "$OUT/$name" "$@" $COMMON > "$OUT/$name.log" 2>&1
}
S=${START_AT:-A1}
case $S in A1) run A_stage1 $ARCH_A --steps 1600 --max_minutes 20 --eval_every 400 ;; esac
case $S in A1|A2) run A_stage2 $ARCH_A --init_from "$OUT/A_stage1" --steps 1400 --warmup 50 --lr 1.5e-3 \
  --max_minutes 12 --eval_every 350 --seed 1 ;; esac
case $S in A1|A2|A3) run A_stage3 $ARCH_A --init_from "$OUT/A_stage2" --steps 2400 --warmup 50 --lr 1e-3 \
  --max_minutes 3.7 --eval_every 400 --seed 2 ;; esac
case $S in A1|A2|A3|A) run A $ARCH_A --init_from "$OUT/A_stage3" --steps 2000 --warmup 50 --lr 1.5e-3 \
  --max_minutes 18 --eval_every 400 --seed 3 ;; esac
case $S in A1|A2|A3|A|B) run B --arch bert --tokenizer char --data_seed 1 --hidden 128 --layers 4 --heads 4 \
  --intermediate 512 --steps 4000 --lr 1e-3 --warmup 300 --max_minutes 35 --eval_every 500 ;; esac
case $S in A1|A2|A3|A|B|C) run C --arch modernbert --tokenizer bpe --data_seed 2 --hidden 128 --layers 4 --heads 4 \
  --intermediate 384 --steps 4000 --max_minutes 35 --eval_every 500 ;; esac

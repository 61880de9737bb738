#!/bin/bash
# Omniglot at the paper's full budgets (60,000 meta-steps, the same configs
# and the same 600-task evaluations as the CPU runs) on one GPU: as many of
# the protocols in PROTOCOLS as fit in GPU_SECONDS, one after the other,
# each resuming where an earlier call stopped it. The first call also runs
# the first protocol on the machine's CPU beside the GPU, as the baseline,
# in the same script.
#
# Run from the repository root on a machine with a CUDA JAX. Needs:
#   OMNIGLOT_DIR  a folder holding omniglot/ (the two zips and splits/)
#   OUT           where the logs and each protocol's workdir (as a .tgz,
#                 its last checkpoint included) are written
# Optional:
#   GPU_SECONDS   wall-clock budget of this call's GPU runs (default 480); a
#                 run stopped by it saves a checkpoint (SIGTERM) and the next
#                 call resumes it exactly
#   RESUME        a folder of the .tgz files an earlier call wrote to OUT:
#                 unpacked into /tmp first, so finished protocols are skipped
#                 and a stopped one goes on
#   PROTOCOLS     space-separated configs/maml_omniglot.py arguments, in
#                 order (default below: the reference split's four protocols,
#                 then the Vinyals split's, then iMAML 5-way 1-shot on both)
#   BASELINE      1 (default) runs the CPU baseline in the first call
#   WHEELS        a folder of wheels installed first (--no-deps) when the
#                 machine lacks CLU or ml_collections. TensorFlow is not
#                 needed: the trainer writes its event files without it.
set -u
: "${OMNIGLOT_DIR:?}" "${OUT:?}"
GPU_SECONDS=${GPU_SECONDS:-480}
PROTOCOLS=${PROTOCOLS:-"reference 5w5s,reference 20w1s,reference 20w5s,reference 5w1s 5w5s 20w1s 20w5s imaml,reference imaml"}
BASELINE=${BASELINE:-1}
# Cores: the GPU run's host process, and the two CPU baselines.
GPU_CORES=${GPU_CORES:-0-1} CPU1_CORES=${CPU1_CORES:-2} CPUN_CORES=${CPUN_CORES:-3-15}
if [ -n "${WHEELS:-}" ]; then
  rm -rf /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export MAML_PLUGIN_DATA_DIR=$OMNIGLOT_DIR PYTHONUNBUFFERED=1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
nproc
python3 -c 'import jax, flax, optax, orbax.checkpoint as o
print("jax", jax.__version__, "flax", flax.__version__, "optax",
      optax.__version__, "orbax", o.__version__, jax.devices())' || exit 1
if [ -n "${RESUME:-}" ]; then
  for t in "$RESUME"/omni_*.tgz; do [ -e "$t" ] && tar xzf "$t" -C /tmp; done
fi

TRAIN="python3 -m maml_plugin.main --config=configs/maml_omniglot.py"
name() { echo "omni_${1//,/_}"; }  # workdir name of a protocol argument
first=${PROTOCOLS%% *}
started=0
if [ "$BASELINE" = 1 ] && [ ! -e "/tmp/$(name "$first")" ]; then
  # CPU baselines on the cores the GPU run does not use: one core (as our
  # 2-core CPU runs) and the rest. Each runs while the first protocol runs
  # on the GPU, then is stopped with SIGTERM (event files flushed).
  JAX_PLATFORMS=cpu taskset -c "$CPU1_CORES" $TRAIN:"$first" \
    --workdir=/tmp/cpu1 --config.log_every_steps=50 > "$OUT/cpu1.log" 2>&1 &
  CPU1=$!
  JAX_PLATFORMS=cpu taskset -c "$CPUN_CORES" $TRAIN:"$first" \
    --workdir=/tmp/cpun --config.log_every_steps=100 > "$OUT/cpun.log" 2>&1 &
  CPUN=$!
  started=1
fi

deadline=$(( $(date +%s) + GPU_SECONDS ))
for p in $PROTOCOLS; do
  dir=/tmp/$(name "$p")
  if [ -e "$dir/evaluation.json" ]; then
    echo "$p: finished in an earlier call"
    continue
  fi
  left=$(( deadline - $(date +%s) ))
  if [ "$left" -lt 60 ]; then
    echo "$p: not started, $left s of GPU_SECONDS left"
    continue
  fi
  start=$(date +%s.%N)
  taskset -c "$GPU_CORES" timeout -s TERM "$left" $TRAIN:"$p" \
    --workdir="$dir" > "$OUT/$(name "$p").log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  echo "$p: exit $rc, wall $(python3 -c "print(round($end - $start, 1))") s"
  grep -h "meta-steps/s\|Resumed\|after 10" "$OUT/$(name "$p").log" | tail -5
  # Event files, config, evaluation and the last checkpoint (to resume).
  tar czf "$OUT/$(name "$p").tgz" -C /tmp "$(name "$p")"
  if [ "$started" = 1 ]; then
    kill -TERM $CPU1 $CPUN 2>/dev/null
    for _ in $(seq 60); do
      kill -0 $CPU1 2>/dev/null || kill -0 $CPUN 2>/dev/null || break
      sleep 1
    done
    kill -KILL $CPU1 $CPUN 2>/dev/null
    tar czf "$OUT/cpu_baselines.tgz" -C /tmp --exclude=checkpoints cpu1 cpun
    started=0
  fi
done
ls -la "$OUT"

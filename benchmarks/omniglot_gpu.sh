#!/bin/bash
# Omniglot 5-way 1-shot at the paper's protocol (60,000 meta-steps, the same
# config and the same 600-task evaluation as the CPU run) on one GPU, with the
# same machine's CPU as the baseline, measured in the same script.
#
# Run from the repository root on a machine with a CUDA JAX. Needs:
#   OMNIGLOT_DIR  a folder holding omniglot/ (the two zips and splits/)
#   OUT           where the logs and the run's workdir (as a .tgz) are written
#   GPU_SECONDS   wall-clock limit of the GPU run (default 480); a run stopped
#                 by it saves a checkpoint (SIGTERM) and resumes exactly with
#                 the same command. Its workdir is /tmp/omni5w1s_gpu: on a
#                 fresh machine, unpack the .tgz into /tmp first.
# Optional: WHEELS, a folder of wheels installed first (--no-deps) when the
# machine lacks CLU or ml_collections. TensorFlow is not needed: the trainer
# writes its event files without it (maml_plugin.tensorboard_writer).
set -u
: "${OMNIGLOT_DIR:?}" "${OUT:?}"
GPU_SECONDS=${GPU_SECONDS:-480}
# Cores: the GPU run's host process, and the two CPU baselines.
GPU_CORES=${GPU_CORES:-0-1} CPU1_CORES=${CPU1_CORES:-2} CPUN_CORES=${CPUN_CORES:-3-15}
if [ -n "${WHEELS:-}" ]; then
  rm -rf /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export MAML_PLUGIN_DATA_DIR=$OMNIGLOT_DIR PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
nproc
python3 -c 'import jax, flax, optax, orbax.checkpoint as o
print("jax", jax.__version__, "flax", flax.__version__, "optax",
      optax.__version__, "orbax", o.__version__, jax.devices())' || exit 1

TRAIN="python3 -m maml_plugin.main --config=configs/maml_omniglot.py"
# CPU baselines on the cores the GPU run does not use: one core (as our
# 2-core CPU run) and the rest. Each runs until the GPU run ends, then is
# stopped with SIGTERM (its event files flushed), or killed after 60 s.
JAX_PLATFORMS=cpu taskset -c "$CPU1_CORES" $TRAIN --workdir=/tmp/cpu1 \
  --config.log_every_steps=50 > "$OUT/cpu1.log" 2>&1 &
CPU1=$!
JAX_PLATFORMS=cpu taskset -c "$CPUN_CORES" $TRAIN --workdir=/tmp/cpun \
  --config.log_every_steps=100 > "$OUT/cpun.log" 2>&1 &
CPUN=$!

start=$(date +%s.%N)
taskset -c "$GPU_CORES" timeout -s TERM "$GPU_SECONDS" $TRAIN \
  --workdir=/tmp/omni5w1s_gpu --config.checkpoint_every_steps=5000 \
  --config.eval_every_steps=5000 > "$OUT/gpu.log" 2>&1
rc=$?
end=$(date +%s.%N)
echo "GPU run: exit $rc, wall $(python3 -c "print(round($end - $start, 1))") s"
kill -TERM $CPU1 $CPUN 2>/dev/null
for _ in $(seq 60); do
  kill -0 $CPU1 2>/dev/null || kill -0 $CPUN 2>/dev/null || break
  sleep 1
done
kill -KILL $CPU1 $CPUN 2>/dev/null
grep -h "meta-steps/s\|Meta-training\|Resumed" "$OUT/gpu.log" | tail -20
# Event files, config, evaluation and the last checkpoint (to resume).
tar czf "$OUT/omni5w1s_gpu.tgz" -C /tmp omni5w1s_gpu
tar czf "$OUT/cpu_baselines.tgz" -C /tmp --exclude=checkpoints cpu1 cpun
ls -la "$OUT"

#!/bin/bash
# mini-ImageNet 5-way 1-shot at the MAML paper's protocol
# (configs/maml_miniimagenet.py: 60,000 meta-steps, 600-task evaluation) on
# one GPU, resuming across calls like benchmarks/omniglot_gpu.sh.
#
# Run from the repository root on a machine with a CUDA JAX. Needs:
#   MINI_DIR     the folder of your mini-ImageNet files: {train,val,test}.csv
#                and images/ (LAYOUT=csv, the default) or
#                mini-imagenet-cache-{train,val,test}.pkl (LAYOUT=pickle)
#   OUT          where the logs and the run's workdir (as a .tgz) are written
#   GPU_SECONDS  wall-clock limit of this call's training (default 480); a run
#                stopped by it saves a checkpoint (SIGTERM) and the same
#                command resumes it exactly. Its workdir is /tmp/mini5w1s_gpu:
#                on a fresh machine, unpack the .tgz into /tmp first (the
#                dataset, /tmp/mini_tfds, is built again from MINI_DIR).
# Optional: CONFIG (default 5w1s; 5w5s, mamlpp, ...), WHEELS (a folder of
# wheels installed first, --no-deps). TensorFlow is not needed.
set -u
: "${MINI_DIR:?}" "${OUT:?}"
GPU_SECONDS=${GPU_SECONDS:-480} LAYOUT=${LAYOUT:-csv} CONFIG=${CONFIG:-5w1s}
if [ -n "${WHEELS:-}" ]; then
  rm -rf /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import jax, flax; print("jax", jax.__version__, "flax",
      flax.__version__, jax.devices())' || exit 1

# The dataset, once (TFDS skips a prepared one).
python3 -c "
import sys, tensorflow_datasets as tfds, maml_plugin.tasks
b = tfds.builder('mini_imagenet_tasks/$LAYOUT', data_dir='/tmp/mini_tfds')
b.download_and_prepare(file_format='array_record',
    download_config=tfds.download.DownloadConfig(manual_dir='$MINI_DIR'))
print(dict(b.info.metadata['images']), dict(b.info.metadata['sha256']))
" > "$OUT/build.log" 2>&1 || { tail -3 "$OUT/build.log"; exit 1; }
tail -1 "$OUT/build.log"

start=$(date +%s.%N)
timeout -s TERM "$GPU_SECONDS" python3 -m maml_plugin.main \
  --config=configs/maml_miniimagenet.py:"$CONFIG" \
  --config.dataset=mini_imagenet_tasks/"$LAYOUT" \
  --config.data_dir=/tmp/mini_tfds --workdir=/tmp/mini5w1s_gpu \
  --config.log_every_steps=500 >> "$OUT/gpu.log" 2>&1
rc=$?
end=$(date +%s.%N)
echo "GPU run: exit $rc, wall $(python3 -c "print(round($end - $start, 1))") s"
grep -h "meta-steps/s\|Meta-training\|Resumed\|accuracy" "$OUT/gpu.log" | tail -12
tar czf "$OUT/mini5w1s_gpu.tgz" -C /tmp mini5w1s_gpu
ls -la "$OUT"

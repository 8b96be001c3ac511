#!/usr/bin/env bash
# Device check of training on a CUDA machine: GPU tests (AMP), Lightning overhead against a
# plain loop at 224 px with AMP, and a few CPU-recipe candidates trained side by side (the GPU
# only makes the search fast; the chosen recipe is then timed on the CPU).
# Usage: benchmarks/gpu_check_training.sh DATA_ROOT OUT   (wheels for missing packages in .whl/)
set -uo pipefail
root=$(realpath "${1:?usage: benchmarks/gpu_check_training.sh DATA_ROOT OUT}")
out=${2:?OUT folder}
mkdir -p "$out"
if ! python3 -c "import hydra, kornia" 2>/dev/null && [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 CELEBA_SUBSET=$root
export CELEBA_ROOT=$root CELEBA_GENDER_CACHE=/tmp/celeba-cache
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
[ "${SKIP_TESTS:-0}" = 1 ] || python3 -m pytest tests/test_gpu.py -q -p no:cacheprovider -W ignore 2>&1 | tail -3
python3 -m celeba_gender.data "$root" > /dev/null  # fill the caches once, before the parallel runs

run() {  # name, overrides...
  local name=$1; shift
  python3 train.py experiment=cpu_quick trainer=gpu trainer.precision=32 trainer.enable_progress_bar=false \
    "hydra.run.dir=/tmp/recipes/$name" "$@" > "/tmp/recipes-$name.log" 2>&1
}
python3 benchmarks/lightning_overhead.py --root "$root" --size 224 --batch-size 64 --steps 40 \
  --repeats 2 --precision 16-mixed --cache-dir /tmp/celeba-cache --output "$out/lightning_overhead_gpu.json" 2>&1 | grep -v -i warn | tail -4
[ "${RECIPES:-1}" = 1 ] || exit 0
rrc='data.augmentations=[{name:horizontal_flip},{name:random_resized_crop,scale:[0.5,1.0],ratio:[0.8,1.25]},{name:color_jitter,brightness:0.3,contrast:0.3,saturation:0.3}]'
mkdir -p /tmp/recipes
run s48_rrc_full data.image_size=48 trainer.max_epochs=40 "$rrc" data.face_crop=null &
run s48_rrc data.image_size=48 trainer.max_epochs=40 "$rrc" &
run s48_seed1 data.image_size=48 trainer.max_epochs=40 seed=1 &
run s32_e80_rrc data.image_size=32 trainer.max_epochs=80 "$rrc" &
run s56_rrc data.image_size=56 trainer.max_epochs=40 "$rrc" &
run s48_rrc_wd01 data.image_size=48 trainer.max_epochs=40 "$rrc" optimizer.weight_decay=0.1 &
wait
python3 - "$out" <<'PY'
import json, sys, pathlib
rows = []
for d in sorted(pathlib.Path("/tmp/recipes").iterdir()):
    m = json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").exists() else {"status": "missing"}
    rows.append({"recipe": d.name, **{k: m.get(k) for k in ("status", "test/acc", "best_val", "epochs_trained", "error")}})
    print(f"{d.name:12s} {m.get('status')} test/acc={m.get('test/acc')} best_val={m.get('best_val')}")
pathlib.Path(sys.argv[1], "recipes.json").write_text(json.dumps(rows, indent=2))
PY

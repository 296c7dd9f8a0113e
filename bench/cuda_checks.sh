#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in one go (a few minutes on one H100/H200):
#   1. the tests marked `gpu` (tests/test_cuda.py: loader, supernet, search + resume, training, LUT);
#   2. a latency table of this GPU at the paper's 224x224, batch 1 (CUDA events between the parts);
#   3. that table validated three times on 20 random + the named architectures;
#   4. a second build (--seed 1), compared entry by entry with the first (bench_lut.py agree).
# usage: bash bench/cuda_checks.sh OUT_DIR [BUILD_BUDGET_S]     (everything lands in OUT_DIR)
set -uo pipefail
out=${1:?usage: bash bench/cuda_checks.sh OUT_DIR [BUILD_BUDGET_S]}
budget=${2:-60}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$out/gpu.txt"
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"
python -m pytest -q -m gpu tests/test_cuda.py 2>&1 | tee "$out/gpu_tests.txt"
lut="$out/fbnet_224_cuda.json"
python supernet_main_file.py --train_or_sample build_lut --lut_path "$lut" --search_space fbnet \
    --input_size 224 --device cuda --lut_time_budget_s "$budget" --progress False || exit 1
for i in 1 2 3; do
    python supernet_main_file.py --train_or_sample validate_lut --lut_path "$lut" --num_archs 20 \
        --report_path "$out/fbnet_224_cuda.validation_$i.json" --progress False | tail -n 1 \
        | tee -a "$out/fbnet_224_cuda.validations.jsonl"
done
python supernet_main_file.py --train_or_sample build_lut --lut_path "$out/fbnet_224_cuda.build2.json" \
    --search_space fbnet --input_size 224 --device cuda --lut_time_budget_s "$budget" --seed 1 \
    --progress False | tail -n 1
python bench/bench_lut.py agree --lut_a "$lut" --lut_b "$out/fbnet_224_cuda.build2.json" \
    | tee "$out/fbnet_224_cuda.agreement.json"

#!/usr/bin/env bash
# On the lent GPU machine: write the GPU's reference files of tests/data/portable (from the images in
# .data/psrc: a sample and a 552x296 mosaic of the samples whose vq index map spans prior tiles of
# four shapes), decode every writer's files there (the CPU writers' from .data/pref), run
# the GPU-marked tests, and fuzz the decoder with tools/fuzz.py on the machine's CPU cores.
#   tools/portable_refs.sh [FUZZ_CASES]      (carry .whl .data/psrc .data/pref)
# Here, before: tools/cross_device.py encode --dataset .data/psrc --out .data/pref/cpu-avx512 (and
# again held to SSE-era kernels, --out .data/pref/cpu-sse). Everything lands in $OUT.
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .whl/* >/tmp/install.log 2>&1 || { cat /tmp/install.log; exit 1; }
python3 setup.py -q build_ext --inplace >>/tmp/install.log 2>&1 || { cat /tmp/install.log; exit 1; }
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(), torch.backends.cpu.get_cpu_capability())" | tee $OUT/machine.txt
nproc >> $OUT/machine.txt
python3 tools/cross_device.py encode --dataset .data/psrc --out .data/pref/gpu --device cuda
python3 tools/cross_device.py decode --files .data/pref/* --dataset .data/psrc --out $OUT/dec-gpu.json --device cuda
tar czf $OUT/gpu.tgz -C .data/pref gpu
python3 -m pytest -q -m gpu tests/ 2>&1 | tail -5 | tee $OUT/gpu-tests.txt
python3 tools/fuzz.py --cases ${1:-100000} --workers $(( $(nproc) - 2 )) --seed 7 --out /tmp/fuzz 2>$OUT/fuzz-progress.txt | tee $OUT/fuzz.json
tar czf $OUT/fuzz.tgz -C /tmp fuzz

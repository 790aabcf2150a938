#!/usr/bin/env bash
# The lent GPU machine's part of the "portable files" figures (results/portable/): the GPU writes
# Kodak files and the test reference files and decodes every writer's (the development CPU decodes
# the GPU's); GPU timings of the integer path against the float path.  Run as
#   tools/portable_run.sh
# Carried: .whl (compressai's sdist, pytorch-msssim, piq), .data/kodak (Kodak), .data/xdev (files
# written on the development CPU), .data/old (the float-path release, 77c93c8). Everything lands in
# one $OUT/portable-<step>.tgz (the tool returns at most 8 files).
set -uo pipefail
R=/tmp/res-cross; rm -rf $R; mkdir -p $R; trap 'tar czf $OUT/portable-cross.tgz -C $R .' EXIT
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
if [ ! -e /tmp/site/compressai ]; then
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .whl/* >$R/install.log 2>&1 || { cat $R/install.log; exit 1; }
fi
python3 setup.py -q build_ext --inplace >>$R/install.log 2>&1 || { cat $R/install.log; exit 1; }
cp bitstream/_rangecoder*.so .data/old/bitstream/
K=.data/kodak X=.data/xdev
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(), torch.backends.cpu.get_cpu_capability())" | tee $R/machine.txt
nproc >> $R/machine.txt
python3 tools/cross_device.py encode --dataset $K --limit 3 --out $X/gpu --device cuda
python3 tools/cross_device.py encode --dataset datasets/samples --limit 1 --out $R/gpu --device cuda
python3 tools/cross_device.py decode --files tests/data/portable/cpu-* $R/gpu --dataset datasets/samples --out $R/dec-gpu-samples.json --device cuda
python3 tools/cross_device.py decode --files $X/* --dataset $K --out $R/dec-gpu.json --device cuda
cp -r $X/gpu $R/xdev-gpu  # decoded by the development CPU, natively and held to SSE-era kernels
python3 tools/bench_model.py $K --images 8 --device cuda --vq 1024 > $R/bench-gpu-integer.txt 2>&1
(cd .data/old && PYTHONPATH=/tmp/site:$PWD python3 tools/bench_model.py ../kodak --images 8 --device cuda --vq 1024) > $R/bench-gpu-float.txt 2>&1
ls -laR $R | head -50

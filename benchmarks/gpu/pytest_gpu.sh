#!/usr/bin/env bash
# Run the test suite, GPU tests included, on the GPU machine (which has no TVM).
#
#   here:   bash benchmarks/gpu/pytest_gpu.sh pack .gpuTVM    (once, into a folder of its own;
#           ~5 min on 2 cores)
#   there:  bash benchmarks/gpu/pytest_gpu.sh run .gpuTVM [pytest args]   (the `run` tool, carry [".gpuTVM"])
#
# TVM's wheel (100 MB) is over what a device call may carry (64 MiB with the working tree).
# `pack` splits it: libtvm_compiler.so (259 MB, ~all of it) compressed by xz with the x86
# filter, the rest of the package without CUTLASS's headers (attncc's kernels include none)
# the apache-tvm-ffi wheel for CPython 3.12 (the GPU machine's Python) and filecheck as one tar.xz.
# `run` unpacks them into /tmp/site and runs pytest there with nvcc on PATH, so the tests
# that skip here (no CUDA device) build and run their kernels on the GPU. Everything else the
# suite needs (numpy, sympy, networkx, ml_dtypes, hypothesis, pytest-xdist, torch, jax) is on that
# machine. The ROCm tests skip there as here (no ld.lld 17+ nor ROCm bitcode).
set -euo pipefail
mode=${1:?usage: pytest_gpu.sh pack|run DEST [pytest args]}
dest=${2:?usage: pytest_gpu.sh pack|run DEST [pytest args]}
shift 2
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
TVM_VERSION=0.27.0.post1

pack() {
    local py=${PYTHON:-python3} tmp ffi
    tmp=$(mktemp -d)
    trap "rm -rf '$tmp'" EXIT
    ffi=$($py -c "import tvm_ffi; print(tvm_ffi.__version__)")
    rm -f "$dest"/tvm-rest.tar.xz "$dest"/libtvm_compiler.so.xz
    local plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
                --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
                --platform manylinux2014_x86_64)
    $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${plat[@]}" -d "$tmp/whl" "apache-tvm==$TVM_VERSION" "apache-tvm-ffi==$ffi"
    # the test extra's one package that machine lacks (pure Python, 30 KB)
    $py -m pip download -q --no-deps --only-binary=:all: -d "$tmp/whl" \
        "filecheck==$($py -c 'import importlib.metadata as m; print(m.version("filecheck"))')"
    mkdir "$tmp/pkg"
    for w in "$tmp"/whl/*.whl; do (cd "$tmp/pkg" && unzip -q -o "$w"); done
    echo "compressing libtvm_compiler.so (about 4 minutes)..."
    xz -T1 --x86 --lzma2=preset=9e,dict=256MiB,nice=273 -c "$tmp/pkg/tvm/lib/libtvm_compiler.so" \
        > "$dest/libtvm_compiler.so.xz"
    # what neither attncc nor `import tvm` reads: the compiler library (packed above), CUTLASS's
    # headers, the web runtime and its C++ sources, relax's model importers
    rm -rf "$tmp/pkg/tvm/lib/libtvm_compiler.so" "$tmp/pkg/tvm/3rdparty/cutlass" "$tmp/pkg/tvm/src" \
        "$tmp/pkg/tvm/web" "$tmp"/pkg/tvm/relax/frontend/{onnx,torch,tflite,stablehlo}
    find "$tmp/pkg" -name __pycache__ -prune -exec rm -rf {} +
    (cd "$tmp/pkg" && tar cf - . | xz -9e > "$dest/tvm-rest.tar.xz")
    # what a call carries, counted as the device tool counts it (files in 4 KiB blocks; measured:
    # 63.8 MiB in bytes was refused)
    local carried tree results
    carried=$(du -cb "$dest"/* | tail -1 | cut -f1)
    tree=$( (git ls-files; git ls-files --others --exclude-standard) | tr '\n' '\0' | xargs -0 du -ck 2>/dev/null \
           | tail -1 | cut -f1)
    tree=$((tree * 1024))
    results=$(du -sk benchmarks/gpu/results | cut -f1)
    echo "$dest: $((carried / 1048576)) MiB; with the working tree $(((carried + tree) / 1048576)) MiB of 64"
    if [ $((carried + tree)) -ge $((64 * 1048576)) ]; then
        echo "pytest_gpu.sh: over what a call carries; benchmarks/gpu/results ($((results / 1024)) MiB) is not" \
             "read by the tests: move it out of the tree for the call (mv benchmarks/gpu/results /tmp/;" \
             "then back)" >&2
    fi
}

run() {
    local site=/tmp/site
    if [ ! -f "$dest/tvm-rest.tar.xz" ] || [ ! -f "$dest/libtvm_compiler.so.xz" ]; then
        echo "pytest_gpu.sh: no pack in $dest: run 'pytest_gpu.sh pack $dest' where TVM is installed" >&2
        exit 2
    fi
    mkdir -p "$site"
    tar xJf "$dest/tvm-rest.tar.xz" -C "$site"
    xz -dc "$dest/libtvm_compiler.so.xz" > "$site/tvm/lib/libtvm_compiler.so"
    export PYTHONPATH="$site:$PWD" LD_LIBRARY_PATH="$site/tvm_ffi/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    export PATH="/usr/local/cuda/bin:$PATH" TVM_CUDA_COMPILE_MODE=nvcc     # (TVM's default is NVRTC)
    python3 -c "import tvm; from attncc.targets import cuda; print('tvm', tvm.__version__, 'cuda device:', tvm.cuda(0).exist, 'arch:', cuda.local_arch())"
    # test_export's GPU test loads a CUDA export with the runtime alone: make one here
    if [ -z "${ATTNCC_EXPORT_CUDA_DIR:-}" ]; then
        export ATTNCC_EXPORT_CUDA_DIR=/tmp/attncc-export-cuda
        python3 benchmarks/export.py --export-cuda "$ATTNCC_EXPORT_CUDA_DIR"
    fi
    python3 -m pytest "$@"
}

case "$mode" in
    pack) pack ;;
    run) run "$@" ;;
    *) echo "pytest_gpu.sh: unknown mode '$mode' (pack or run)" >&2; exit 2 ;;
esac

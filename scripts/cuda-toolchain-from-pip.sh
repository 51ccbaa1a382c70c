#!/usr/bin/env bash
# Build dlpx with `--features cuda` on a machine without a CUDA toolkit or GPU (a login node, a
# laptop): fetch NVIDIA's CUDA 13.0 compiler and libraries as pip wheels into DIR, add the
# unversioned library links the linker wants and a link-time stub of libcuda (the real driver
# library is loaded on the GPU machine), then print the environment for cargo.
#
#   scripts/cuda-toolchain-from-pip.sh /tmp/cu && source /tmp/cu/env.sh
#   cargo build --release --features cuda
#
# On the GPU machine, LD_LIBRARY_PATH must reach libcublas.so.13, libcublasLt.so.13,
# libcurand.so.10 and libcudart.so.13 (a CUDA 13 toolkit's lib directory has them).
# CUDA_COMPUTE_CAP picks the GPU generation of the kernels (90: H100/H200; 80: A100; 89: L4/4090).
set -euo pipefail
dir=${1:?usage: $0 DIR}
mkdir -p "$dir/wheels" "$dir/root"
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.11 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
  -d "$dir/wheels" "nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-crt==13.0.88" "nvidia-nvvm==13.0.88" \
  "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-runtime==13.0.96" "nvidia-cublas==13.0.2.14" \
  "nvidia-curand==10.4.5.25" "nvidia-cuda-nvrtc==13.0.88"
for w in "$dir"/wheels/*.whl; do python3 -m zipfile -e "$w" "$dir/root"; done
cu="$dir/root/nvidia/cu13"
chmod +x "$cu"/bin/* "$cu"/nvvm/bin/* 2>/dev/null || true
(cd "$cu/lib" && for l in cublas cublasLt cudart nvrtc; do ln -sf "lib$l.so.13" "lib$l.so"; done \
  && ln -sf libcurand.so.10 libcurand.so)
ln -sfn lib "$cu/lib64"
# libcuda comes with the driver, not the toolkit: link against a stub exporting the driver API
# names cudarc declares; at run time the soname libcuda.so.1 resolves to the real driver.
cargo fetch --manifest-path "$(dirname "$0")/../Cargo.toml" >/dev/null
reg=$(ls -d ~/.cargo/registry/src/*/cudarc-0.19.* | head -1)
grep -ohE "^\s+fn (cu[A-Za-z0-9_]+)\(" "$reg/src/driver/sys/mod.rs" | sed -E 's/\s+fn (cu[A-Za-z0-9_]+)\(/\1/' \
  | sort -u | awk '{print "int " $1 "(void){return 999;}"}' > "$dir/libcuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cu/lib/libcuda.so" "$dir/libcuda_stub.c"
cat > "$dir/env.sh" <<ENV
export CUDA_ROOT=$cu CUDA_PATH=$cu PATH=$cu/bin:\$PATH LIBRARY_PATH=$cu/lib
export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}
ENV
echo "toolchain in $cu; now: source $dir/env.sh && cargo build --release --features cuda"

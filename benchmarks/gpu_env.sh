# Shared set-up of the GPU scripts (benchmarks/run_gpu_checks.sh, benchmarks/organism/run_gpu_sweep.sh); source it
# from the repository root. Both run from a source checkout on a machine without package registries.

# layout_package DIR: copy attnrl/, kernels/ and rewards/ into DIR laid out as the installed package
# (attnrl.kernels, attnrl.rewards), so that DIR on PYTHONPATH imports like `pip install .`.
layout_package() {
  cp -r attnrl "$1/attnrl" && cp -r kernels "$1/attnrl/kernels" && cp -r rewards "$1/attnrl/rewards"
}

# The pip arguments that install the carried wheels (.whl/, from benchmarks/fetch_gpu_wheels.sh) into a --target
# folder, offline; they are built for the GPU machine's CPython 3.12, so other interpreters must not use them.
WHEEL_INSTALL_ARGS=(-m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade
                    --python-version 3.12 --only-binary=:all:)

# wheels_match PY: 0 when the interpreter PY is the CPython 3.12 the carried wheels were built for.
wheels_match() {
  "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'
}

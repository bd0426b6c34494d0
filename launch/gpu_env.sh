# Sourced by the GPU check scripts from the repository root: installs the wheels
# carried in .whl/ (grain, array_record, ml_collections, portpicker: not on the
# GPU image; SKIP_WHEELS=1 skips that, e.g. for a CPU dry run), puts them and the
# repository on PYTHONPATH, lets JAX take more than its default 75% of the card
# (the 1B train step at batch 8 needs ~56 GiB) and prints the device and versions.
if [ -z "${SKIP_WHEELS:-}" ] && compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.94}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"

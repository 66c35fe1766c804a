# shellcheck shell=bash
# Sourced by the slurm/*.sbatch scripts: environment set-up and the launcher.
# DRY_RUN=1 prints every command instead of running it (CI checks the scripts this way, without SLURM).

# Print a command with shell quoting, or run it.
launch() {
  if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "$@"; printf '\n'
  else
    "$@"
  fi
}

# Load modules, activate the Python environment, set threads; fail early with a clear message.
setup_env() {
  if [ -n "${MODULES:-}" ]; then
    if command -v module >/dev/null 2>&1; then
      # shellcheck disable=SC2086  # MODULES is a space-separated list on purpose
      launch module load $MODULES
    elif [ "${DRY_RUN:-0}" != 1 ]; then
      echo "slurm: MODULES='$MODULES' is set but the 'module' command is missing on $(hostname)" >&2; exit 2
    fi
  fi
  if [ -n "${VENV:-}" ]; then
    if [ "${DRY_RUN:-0}" = 1 ]; then echo "source $VENV/bin/activate"
    elif [ -f "$VENV/bin/activate" ]; then
      # shellcheck disable=SC1091
      source "$VENV/bin/activate"
    else
      echo "slurm: VENV='$VENV' has no bin/activate; edit VENV at the top of the script" >&2; exit 2
    fi
  fi
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-8}}"
  export PYTHONUNBUFFERED=1
  if [ "${DRY_RUN:-0}" != 1 ] && ! command -v unet3plus-train >/dev/null 2>&1; then
    echo "slurm: unet3plus is not installed in this environment (pip install -e '.[dev]' in the repo, or set VENV)" >&2; exit 2
  fi
}

# First host of the allocation (the rendezvous host); localhost outside SLURM.
master_addr() {
  if [ -n "${SLURM_JOB_NODELIST:-}" ] && command -v scontrol >/dev/null 2>&1; then
    scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1
  else
    echo localhost
  fi
}

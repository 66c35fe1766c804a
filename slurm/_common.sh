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

# Address of the first node of the allocation (the rendezvous host): its NodeAddr (the node name unless
# slurm.conf says otherwise); localhost outside SLURM.
master_addr() {
  if [ -n "${SLURM_JOB_NODELIST:-}" ] && command -v scontrol >/dev/null 2>&1; then
    local node addr
    node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    addr=$(scontrol show node "$node" 2>/dev/null | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)
    echo "${addr:-$node}"
  else
    echo localhost
  fi
}

# Exit status of a training run that stopped on a signal after writing a checkpoint (unet3plus.train.REQUEUE_STATUS).
REQUEUE_STATUS=75

# Run a job step in the background so that this shell takes SLURM's signals while it runs: SIGUSR1 (the
# time-limit warning of #SBATCH --signal=B:USR1@N) and SIGTERM are passed on to srun, which signals every
# process of the step (the trainers checkpoint and exit with 75). A step that exits with 75 after SIGUSR1 (or
# after a SIGUSR1 sent to the trainers directly) stopped to be continued: the job is requeued (scontrol requeue;
# #SBATCH --requeue) and its next run resumes. After SIGTERM (scancel, preemption, the time limit) SLURM decides.
run_requeueable() {
  if [ "${DRY_RUN:-0}" = 1 ]; then launch "$@"; return 0; fi
  local rc
  got_term=
  "$@" &
  step_pid=$!
  trap 'echo "slurm: SIGUSR1 (time limit near, or scancel --signal=USR1): the training processes checkpoint and stop"
        kill -USR1 "$step_pid" 2>/dev/null || true' USR1
  trap 'echo "slurm: SIGTERM: passed on to the training processes"; got_term=1; kill -TERM "$step_pid" 2>/dev/null || true' TERM
  while :; do
    rc=0; wait "$step_pid" || rc=$?
    kill -0 "$step_pid" 2>/dev/null || break      # a trapped signal ends `wait` early: wait again
  done
  trap - USR1 TERM
  if [ "$rc" = "$REQUEUE_STATUS" ] && [ -n "${SLURM_JOB_ID:-}" ]; then
    if [ -n "$got_term" ]; then
      echo "slurm: the run stopped with a checkpoint after SIGTERM: not requeued (SLURM cancels, or requeues a preempted job itself)"
    else
      echo "slurm: the run stopped with a checkpoint (exit status $rc): requeueing job $SLURM_JOB_ID"
      scontrol requeue "$SLURM_JOB_ID" && exit 0     # SLURM ends this run of the job script here
    fi
  fi
  return "$rc"
}

#!/usr/bin/env bash
# Stop the cluster that tests/slurm/start.sh STATE_DIR started: cancel its
# jobs, then stop slurmd, slurmctld, slurmdbd, mariadbd and munged by the pid
# files under STATE_DIR/run.  Idempotent: a missing state dir or pid file, or
# a daemon that is already gone, is fine.  Leaves STATE_DIR in place.
set -uo pipefail

log() { echo "[slurm-stop] $*"; }
[ $# -eq 1 ] || { echo "usage: $0 STATE_DIR" >&2; exit 2; }
if [ ! -d "$1" ]; then
  log "no state dir $1; nothing to stop"
  exit 0
fi
STATE=$(cd "$1" && pwd -P)
RUN=$STATE/run

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # alive PIDFILE

# Cancel whatever is still queued or running, so no job steps outlive slurmd.
if alive "$RUN/slurmctld.pid" && [ -f "$STATE/etc/slurm.conf" ]; then
  export SLURM_CONF=$STATE/etc/slurm.conf
  jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    timeout 10 scancel $jobs 2>/dev/null || true
    for _ in $(seq 1 50); do
      [ -z "$(timeout 5 squeue -h -o %A 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
fi

stop_one() {
  local name=$1 pidfile=$RUN/$1.pid pid
  if ! alive "$pidfile"; then
    [ -f "$pidfile" ] && log "$name not running"
    rm -f "$pidfile"
    return 0
  fi
  pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 200); do            # up to 20 s
    alive "$pidfile" || break
    sleep 0.1
  done
  if alive "$pidfile"; then
    log "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
  fi
  rm -f "$pidfile"
  log "$name stopped (pid $pid)"
}

for d in slurmd slurmctld slurmdbd mariadb munged; do
  stop_one "$d"
done
# Remove the /etc/slurm/slurm.conf symlink start.sh made, if it is ours.
if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$STATE/etc/slurm.conf" ]; then
  rm -f /etc/slurm/slurm.conf
  log "removed /etc/slurm/slurm.conf symlink"
fi
log "done"
exit 0

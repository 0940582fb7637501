#!/usr/bin/env bash
# Install what tests/slurm/start.sh needs for a one-node Slurm cluster with
# accounting: Debian 12's Slurm 22.05 (slurmctld, slurmd, slurmdbd and the
# client commands), MUNGE, and the MariaDB server core (the database that
# slurmdbd stores accounting in; sacct, which the Snakemake SLURM executor
# polls, needs it).  Idempotent: exits 0 at once when all is installed.
# Services are never started here (Debian's policy-rc.d in containers blocks
# that anyway); start.sh runs every daemon itself under a state directory.
set -euo pipefail

PACKAGES=(
  munge                 # munged + munge.key handling (Slurm's auth)
  slurmctld             # controller
  slurmd                # compute node daemon (brings slurm-wlm-basic-plugins)
  slurmdbd              # accounting daemon (brings slurm-wlm-mysql-plugin)
  slurm-client          # sbatch, sacct, sacctmgr, sinfo, squeue, scontrol, srun
  mariadb-server-core   # mariadbd + mariadb-install-db
  mariadb-client-core   # my_print_defaults, which mariadb-install-db calls
)

log() { echo "[slurm-install] $*"; }

missing=()
for p in "${PACKAGES[@]}"; do
  if [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" != "installed" ]; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  log "already installed: ${PACKAGES[*]}"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    log "ERROR: need root (or sudo) to apt-get install: ${missing[*]}" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
log "apt-get update"
$SUDO apt-get update -q
log "apt-get install ${missing[*]}"
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"

for p in "${PACKAGES[@]}"; do
  if [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" != "installed" ]; then
    log "ERROR: $p is still not installed" >&2
    exit 1
  fi
done
log "installed: $(dpkg-query -W -f='${Package} ${Version}\n' slurmctld munge mariadb-server-core | tr '\n' ' ')"

#!/usr/bin/env bash
# Start a real one-node Slurm cluster (Slurm 22.05 from Debian 12) with job
# accounting, everything kept under STATE_DIR:
#
#   munged -> mariadbd -> slurmdbd -> (sacctmgr: cluster/account/users)
#          -> slurmctld -> slurmd
#
# Usage: tests/slurm/start.sh STATE_DIR
#
# Afterwards `source STATE_DIR/env.sh` (it exports SLURM_CONF) and use sbatch,
# sacct, ... as usual.  Stop with tests/slurm/stop.sh STATE_DIR.
#
# The node is named after `hostname -s`, has all CPUs and ~95% of MemTotal,
# $SLURM_TEST_GPUS fake GPUs (gres/gpu of type $SLURM_TEST_GPU_TYPE whose
# "device files" are character devices under STATE_DIR/dev that are copies of
# /dev/null), and sits in two partitions, `cpu` (the default) and `gpu`, the
# names profiles/slurm uses.  So
# `sbatch --gpus=1`, `--gpus=testgpu:1` and `--gres=gpu:1` are accepted and
# show up as gres/gpu in AllocTRES; no real GPU is involved.  Accounting
# enforces associations: jobs run under the account $SLURM_TEST_ACCOUNT
# (default "bench"), the default account of root (and of $SUDO_USER).
# STATE_DIR must be a path without spaces (Slurm config files hold it).
#
# Environment knobs (all optional):
#   SLURM_TEST_ACCOUNT   account to create                      [bench]
#   SLURM_TEST_CLUSTER   ClusterName                            [snakebench]
#   SLURM_TEST_TIMEOUT   seconds to wait for each daemon         [90]
#   SLURM_TEST_GPUS      fake gres/gpu count on the node (0: none) [1]
#   SLURM_TEST_GPU_TYPE  GPU type (gpu_model); empty: untyped  [testgpu]
#   SLURM_TEST_LINK_ETC  1: symlink /etc/slurm/slurm.conf to our config, as
#                        srun inside jobs needs (see below); 0: don't  [1]
# Ports are picked free at first start and kept in STATE_DIR/ports.env.
set -euo pipefail

T0=$EPOCHREALTIME
elapsed() { awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
log() { echo "[slurm-start $(elapsed)s] $*"; }
die() { echo "[slurm-start] ERROR: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 STATE_DIR"
[ "$(id -u)" -eq 0 ] || die "must run as root (slurmd and munged need it)"
for b in munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sacctmgr sinfo sacct; do
  command -v "$b" >/dev/null 2>&1 || die "$b not found; run tests/slurm/install.sh first"
done

mkdir -p "$1"
STATE=$(cd "$1" && pwd -P)
case "$STATE" in *[[:space:]]*) die "STATE_DIR must not contain whitespace: $STATE" ;; esac
ACCOUNT=${SLURM_TEST_ACCOUNT:-bench}
CLUSTER=${SLURM_TEST_CLUSTER:-snakebench}
TIMEOUT=${SLURM_TEST_TIMEOUT:-90}
NGPU=${SLURM_TEST_GPUS:-1}
GPU_TYPE=${SLURM_TEST_GPU_TYPE-testgpu}

ETC=$STATE/etc RUN=$STATE/run LOG=$STATE/log SPOOL=$STATE/spool
MUNGE=$STATE/munge DB=$STATE/mysql
mkdir -p "$ETC" "$RUN" "$LOG" "$SPOOL/ctld" "$SPOOL/d" "$MUNGE" "$DB"
chmod 0700 "$MUNGE"

# ---------------------------------------------------------------- helpers ---
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # alive PIDFILE

# start NAME LOGFILE CMD...: run CMD in the foreground mode of the daemon,
# detached in its own session; its pid goes to $RUN/NAME.pid.
start_daemon() {
  local name=$1 logfile=$2; shift 2
  if alive "$RUN/$name.pid"; then
    log "$name already running (pid $(cat "$RUN/$name.pid"))"
    return 0
  fi
  setsid "$@" >>"$logfile" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
  log "$name started (pid $!)"
}

# wait_for DESC NAME LOGFILE CMD...: poll CMD until it succeeds; on failure
# show the daemon's log (and the output of $DIAG, if set) and exit 1.
DIAG=""
show_failure() {
  echo "---- last lines of $1 ----" >&2; tail -n 30 "$1" >&2 || true
  if [ -n "$DIAG" ]; then echo "---- $DIAG ----" >&2; eval "$DIAG" >&2 2>&1 || true; fi
}
wait_for() {
  local desc=$1 name=$2 logfile=$3; shift 3
  local deadline=$(( $(date +%s) + TIMEOUT ))
  until "$@" >/dev/null 2>&1; do
    if ! alive "$RUN/$name.pid"; then
      show_failure "$logfile"
      die "$name died while waiting for: $desc (log: $logfile)"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      show_failure "$logfile"
      die "timed out after ${TIMEOUT}s waiting for: $desc (log: $logfile; all logs in $LOG)"
    fi
    sleep 0.3
  done
  log "ready: $desc"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  local p
  while :; do
    p=$(( 20000 + RANDOM % 10000 ))
    case " ${USED_PORTS:-} " in *" $p "*) continue ;; esac
    port_in_use "$p" && continue
    USED_PORTS="${USED_PORTS:-} $p"
    echo "$p"; return
  done
}

# ------------------------------------------------------------------ ports ---
if [ -s "$STATE/ports.env" ]; then
  # shellcheck disable=SC1091
  . "$STATE/ports.env"
else
  USED_PORTS=""
  CTLD_PORT=$(free_port); USED_PORTS="$USED_PORTS $CTLD_PORT"
  SLURMD_PORT=$(free_port); USED_PORTS="$USED_PORTS $SLURMD_PORT"
  DBD_PORT=$(free_port); USED_PORTS="$USED_PORTS $DBD_PORT"
  MYSQL_PORT=$(free_port)
  printf 'CTLD_PORT=%s\nSLURMD_PORT=%s\nDBD_PORT=%s\nMYSQL_PORT=%s\n' \
    "$CTLD_PORT" "$SLURMD_PORT" "$DBD_PORT" "$MYSQL_PORT" >"$STATE/ports.env"
fi
log "state dir $STATE (ports: slurmctld $CTLD_PORT, slurmd $SLURMD_PORT, slurmdbd $DBD_PORT, mariadb $MYSQL_PORT)"

# ----------------------------------------------------------------- config ---
NODE=$(hostname -s 2>/dev/null || echo localhost)
[ -n "$NODE" ] || NODE=localhost
NCPU=$(nproc --all)
MEM_MB=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.95}' /proc/meminfo)
MUNGE_SOCKET=$MUNGE/munge.socket.2
SLURM_CONF=$ETC/slurm.conf
export SLURM_CONF

NODE_GRES="" GRES_TYPES="" TRES="" GRES_LINE=""
if [ "$NGPU" -gt 0 ]; then
  # Slurm 22.05 ignores a gres/gpu line without File= (the node then reports
  # 0 GPUs and is drained), and wants File= to be a character device: make
  # /dev/null look-alikes, one per fake GPU.
  mkdir -p "$STATE/dev"
  for i in $(seq 0 $((NGPU - 1))); do
    [ -c "$STATE/dev/fakegpu$i" ] || mknod -m 0666 "$STATE/dev/fakegpu$i" c 1 3 \
      || die "mknod $STATE/dev/fakegpu$i failed (is $STATE on a nodev mount?)"
  done
  if [ "$NGPU" -eq 1 ]; then files="$STATE/dev/fakegpu0"; else files="$STATE/dev/fakegpu[0-$((NGPU - 1))]"; fi
  GRES_TYPES="GresTypes=gpu"
  if [ -n "$GPU_TYPE" ]; then
    NODE_GRES="Gres=gpu:$GPU_TYPE:$NGPU"
    TRES="AccountingStorageTRES=gres/gpu,gres/gpu:$GPU_TYPE"
    GRES_LINE="NodeName=$NODE Name=gpu Type=$GPU_TYPE File=$files"
  else
    NODE_GRES="Gres=gpu:$NGPU"
    TRES="AccountingStorageTRES=gres/gpu"
    GRES_LINE="NodeName=$NODE Name=gpu File=$files"
  fi
fi

cat >"$SLURM_CONF" <<EOF
# generated by tests/slurm/start.sh
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$RUN/slurmctld.own.pid
SlurmdPidFile=$RUN/slurmd.own.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups in a container
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=512
$GRES_TYPES
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# for the persistent connections to slurmdbd (sacct, sacctmgr, slurmctld) the
# munge socket comes from here, not from AuthInfo
AccountingStoragePass=$MUNGE_SOCKET
AccountingStorageEnforce=associations
$TRES
# keep sbatch --comment for sacct: the executor plugin names each job's rule there
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
# keep finished jobs visible to squeue/scontrol for a while (plugin's squeue mode)
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$NODE NodeHostname=$NODE NodeAddr=127.0.0.1 CPUs=$NCPU RealMemory=$MEM_MB $NODE_GRES State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF

printf '# generated by tests/slurm/start.sh\nAutoDetect=off\n%s\n' "$GRES_LINE" >"$ETC/gres.conf"

cat >"$ETC/slurmdbd.conf" <<EOF
# generated by tests/slurm/start.sh
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=$NODE
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.own.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
chmod 0600 "$ETC/slurmdbd.conf"

# The slurm-jobstep executor runs `srun` inside each job with every SLURM_*
# variable except a few job ids stripped from its environment, SLURM_CONF
# included, so that srun only finds the config at Slurm's default path.  Point
# /etc/slurm/slurm.conf at ours (a symlink; stop.sh removes it), unless a
# real config or another live test cluster owns that path.
DEFAULT_CONF=/etc/slurm/slurm.conf
if [ "${SLURM_TEST_LINK_ETC:-1}" = 1 ]; then
  if [ -L "$DEFAULT_CONF" ]; then
    other=$(readlink "$DEFAULT_CONF")
    if [ "$other" != "$SLURM_CONF" ] && [ -e "$other" ] \
       && alive "$(dirname "$(dirname "$other")")/run/slurmctld.pid"; then
      die "$DEFAULT_CONF points to the config of another running test cluster ($other); stop it first"
    fi
    ln -sfn "$SLURM_CONF" "$DEFAULT_CONF"
  elif [ -e "$DEFAULT_CONF" ]; then
    die "$DEFAULT_CONF exists and is not a symlink made by this script; srun inside jobs would use it. Move it away, or set SLURM_TEST_LINK_ETC=0"
  else
    mkdir -p "$(dirname "$DEFAULT_CONF")"
    ln -s "$SLURM_CONF" "$DEFAULT_CONF"
  fi
  log "linked $DEFAULT_CONF -> $SLURM_CONF (for srun inside jobs)"
fi

cat >"$STATE/env.sh" <<EOF
# source this to talk to the test cluster
export SLURM_CONF=$SLURM_CONF
EOF

# ------------------------------------------------------------------ munge ---
if [ ! -s "$MUNGE/munge.key" ]; then
  head -c 1024 /dev/urandom >"$MUNGE/munge.key"
fi
chmod 0400 "$MUNGE/munge.key"
start_daemon munged "$LOG/munged.out" munged --foreground --force \
  --socket="$MUNGE_SOCKET" --key-file="$MUNGE/munge.key" \
  --pid-file="$MUNGE/munged.pid" --log-file="$LOG/munged.log" \
  --seed-file="$MUNGE/munged.seed"
wait_for "munge socket" munged "$LOG/munged.log" \
  sh -c "munge -n --socket='$MUNGE_SOCKET' | unmunge --socket='$MUNGE_SOCKET'"

# ---------------------------------------------------------------- mariadb ---
if [ ! -d "$DB/data/mysql" ]; then
  log "initialising MariaDB data dir"
  mariadb-install-db --no-defaults --datadir="$DB/data" --user=root \
    --auth-root-authentication-method=normal --skip-test-db \
    --skip-name-resolve >"$LOG/mariadb-install-db.log" 2>&1 \
    || { tail -n 30 "$LOG/mariadb-install-db.log" >&2; die "mariadb-install-db failed (log: $LOG/mariadb-install-db.log)"; }
fi
cat >"$DB/init.sql" <<'EOF'
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
start_daemon mariadb "$LOG/mariadb.log" mariadbd --no-defaults --user=root \
  --datadir="$DB/data" --socket="$DB/mysqld.sock" --pid-file="$DB/mysqld.pid" \
  --port="$MYSQL_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
  --init-file="$DB/init.sql" \
  --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900 \
  --innodb-flush-log-at-trx-commit=0 --innodb-doublewrite=0 \
  --log-error="$LOG/mariadb.log"
wait_for "mariadb on 127.0.0.1:$MYSQL_PORT" mariadb "$LOG/mariadb.log" port_in_use "$MYSQL_PORT"

# --------------------------------------------------------------- slurmdbd ---
start_daemon slurmdbd "$LOG/slurmdbd.out" slurmdbd -D
wait_for "slurmdbd answers sacctmgr" slurmdbd "$LOG/slurmdbd.log" \
  sacctmgr -n list cluster

if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
  sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi
if ! sacctmgr -n -P list account format=account | grep -qx "$ACCOUNT"; then
  sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" \
    Description="snakemake tests" Organization=tests >/dev/null
fi
for u in root "${SUDO_USER:-}" "$(id -un)"; do
  [ -n "$u" ] || continue
  if ! sacctmgr -n -P list assoc user="$u" account="$ACCOUNT" format=user | grep -qx "$u"; then
    sacctmgr -i add user "$u" Account="$ACCOUNT" DefaultAccount="$ACCOUNT" Cluster="$CLUSTER" >/dev/null
  fi
done
log "accounting: cluster $CLUSTER, account $ACCOUNT, users root${SUDO_USER:+ $SUDO_USER}"

# ---------------------------------------------------------- slurmctld/d ---
start_daemon slurmctld "$LOG/slurmctld.out" slurmctld -D -i -f "$SLURM_CONF"
wait_for "slurmctld answers" slurmctld "$LOG/slurmctld.log" scontrol ping
start_daemon slurmd "$LOG/slurmd.out" slurmd -D -N "$NODE" -f "$SLURM_CONF"

node_idle() {
  local st
  # one line per partition the node is in (cpu, gpu): the first tells the node's state
  st=$(sinfo -h -N -n "$NODE" -p cpu -o %T 2>/dev/null | head -n 1) || return 1
  # up and responding (a restart may find jobs running); not drained/down
  case "$st" in idle|mixed|allocated|completing) return 0 ;; *) return 1 ;; esac
}
DIAG="sinfo -N -o '%N %T %E'; tail -n 5 '$LOG/slurmctld.log'"
wait_for "node $NODE up (idle) in partition cpu" slurmd "$LOG/slurmd.log" node_idle
DIAG=""
wait_for "sacct answers" slurmctld "$LOG/slurmctld.log" sacct -n -X -a

log "cluster up: node $NODE, $NCPU CPUs, ${MEM_MB} MB, ${NODE_GRES:-no gres}, partitions cpu and gpu, account $ACCOUNT"
log "use: export SLURM_CONF=$SLURM_CONF   (or: source $STATE/env.sh)"

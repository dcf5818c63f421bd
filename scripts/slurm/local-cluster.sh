#!/usr/bin/env bash
# A real SLURM cluster on this machine, for trying vaelab's SLURM launcher and the slow tests.
#
#   scripts/slurm/local-cluster.sh up [NODES]   # install (root, apt) if needed, start, wait for idle nodes
#   scripts/slurm/local-cluster.sh status       # the daemons and sinfo
#   scripts/slurm/local-cluster.sh down         # stop the daemons this script started (by pid file)
#   eval "$(scripts/slurm/local-cluster.sh env)"  # point sbatch, squeue, sinfo and vaelab at it
#
# Everything (slurm.conf, munge key, state, logs, pid files) lives in $VAELAB_SLURM_DIR
# (default /tmp/vaelab-slurm-$UID); nothing in /etc/slurm is touched. NODES (default 2)
# slurmd daemons named vaelab-n1, vaelab-n2, ... share this machine's cores, each on its own
# port; their names are added to /etc/hosts (127.0.0.1) when they do not resolve, because
# Lightning's DDP rendezvous connects to the first node by name.
set -euo pipefail

DIR="${VAELAB_SLURM_DIR:-/tmp/vaelab-slurm-$(id -u)}"
CONF="$DIR/slurm.conf"
PORT="${VAELAB_SLURM_PORT:-16817}"       # slurmctld; node i listens on PORT + i
HOSTS_MARK="# vaelab local SLURM cluster"

say() { echo "local-cluster: $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
    && command -v munged >/dev/null && return 0
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    || die "slurmctld, slurmd, sbatch or munged missing: install Debian's slurmctld slurmd slurm-client munge (needs root)"
  say "installing slurmctld slurmd slurm-client munge with apt"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge) \
    >"$DIR/apt.log" 2>&1 || die "apt-get install failed: see $DIR/apt.log"
}

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

nodes_in_conf() { sed -n 's/^NodeName=\([^ ]*\).*/\1/p' "$CONF" 2>/dev/null; }

write_config() {
  local nodes=$1 cpus mem_mb host names i
  cpus=$(nproc)
  mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / nodes * 9 / 10 ))
  host=$(hostname)
  names=$(seq -s, -f "vaelab-n%g" 1 "$nodes")
  mkdir -p "$DIR"/{state,log,spool,munge}
  chmod 700 "$DIR/munge"
  {
    echo "# written by scripts/slurm/local-cluster.sh: $nodes node(s) on $host"
    echo "ClusterName=vaelab-local"
    echo "SlurmctldHost=$host(127.0.0.1)"
    echo "SlurmctldPort=$PORT"
    echo "SlurmUser=root"
    echo "SlurmdUser=root"
    echo "AuthType=auth/munge"
    echo "CredType=cred/munge"
    # cred_expire: also how long a requeued job waits before it may start again (default 120 s)
    echo "AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10"
    echo "StateSaveLocation=$DIR/state"
    echo "SlurmdSpoolDir=$DIR/spool/%n"
    echo "SlurmctldPidFile=$DIR/slurmctld.pid"
    echo "SlurmdPidFile=$DIR/slurmd-%n.pid"
    echo "SlurmctldLogFile=$DIR/log/slurmctld.log"
    echo "SlurmdLogFile=$DIR/log/slurmd-%n.log"
    echo "ProctrackType=proctrack/linuxproc"
    echo "TaskPlugin=task/none"
    echo "JobAcctGatherType=jobacct_gather/none"
    echo "AccountingStorageType=accounting_storage/none"
    echo "SchedulerType=sched/backfill"
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_Core_Memory"
    echo "MpiDefault=none"
    echo "ReturnToService=2"
    echo "KillWait=10"        # seconds between SIGTERM and SIGKILL when a job is stopped
    echo "MinJobAge=600"      # finished jobs stay visible to scontrol for 10 minutes
    echo "SlurmdTimeout=60"
    echo "InactiveLimit=0"
    for i in $(seq 1 "$nodes"); do
      echo "NodeName=vaelab-n$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$((PORT + i)) CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=$names Default=YES MaxTime=INFINITE State=UP"
  } >"$CONF"
}

resolve_nodes() {
  local nodes=$1 missing="" i
  for i in $(seq 1 "$nodes"); do
    getent hosts "vaelab-n$i" >/dev/null || missing="$missing vaelab-n$i"
  done
  [ -z "$missing" ] && return 0
  [ -w /etc/hosts ] || die "the node names$missing do not resolve: add '127.0.0.1$missing' to /etc/hosts"
  echo "127.0.0.1$missing $HOSTS_MARK" >>/etc/hosts
  say "added '127.0.0.1$missing' to /etc/hosts"
}

start_munge() {
  alive "$DIR/munge/munged.pid" && return 0
  if [ ! -s "$DIR/munge/munge.key" ]; then
    head -c 1024 /dev/urandom >"$DIR/munge/munge.key"
    chmod 400 "$DIR/munge/munge.key"
  fi
  munged --force --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed" \
    || die "munged did not start: see $DIR/munge/munged.log"
}

wait_idle() {
  local nodes=$1 idle=0 _
  for _ in $(seq 1 60); do
    idle=$(SLURM_CONF="$CONF" sinfo -h -N -o "%N %t" 2>/dev/null | awk '$2 == "idle"' | sort -u | wc -l)
    [ "$idle" -ge "$nodes" ] && return 0
    sleep 1
  done
  die "$idle of $nodes nodes idle after 60 s: see $DIR/log/"
}

up() {
  local nodes=${1:-2} node
  [ "$nodes" -ge 1 ] 2>/dev/null || die "NODES must be a number >= 1, got '$nodes'"
  [ "$(id -u)" = 0 ] || die "the local cluster runs its daemons as root: run this as root"
  mkdir -p "$DIR"
  install_packages
  if alive "$DIR/slurmctld.pid"; then
    [ "$(nodes_in_conf | wc -l)" = "$nodes" ] || die "a cluster with $(nodes_in_conf | wc -l) node(s) is up: run down first"
  else
    write_config "$nodes"
  fi
  resolve_nodes "$nodes"
  start_munge
  alive "$DIR/slurmctld.pid" || slurmctld -f "$CONF" || die "slurmctld did not start: see $DIR/log/slurmctld.log"
  for node in $(nodes_in_conf); do
    alive "$DIR/slurmd-$node.pid" || slurmd -f "$CONF" -N "$node" || die "slurmd -N $node did not start: see $DIR/log/"
  done
  wait_idle "$nodes"
  say "up: $nodes node(s) idle; run: export SLURM_CONF=$CONF"
}

stop() {  # stop the daemon of a pid file and wait for it, at most 20 s
  local pidfile=$1 pid _
  alive "$pidfile" || return 0
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
}

down() {
  local node
  for node in $(nodes_in_conf); do stop "$DIR/slurmd-$node.pid"; done
  stop "$DIR/slurmctld.pid"
  stop "$DIR/munge/munged.pid"
  if [ -w /etc/hosts ] && grep -q "$HOSTS_MARK" /etc/hosts; then
    grep -v "$HOSTS_MARK" /etc/hosts >"$DIR/hosts" && cat "$DIR/hosts" >/etc/hosts
  fi
  say "down (state and logs kept in $DIR)"
}

status() {
  local node
  [ -f "$CONF" ] || { say "no cluster configured in $DIR"; return 1; }
  for pidfile in "$DIR/munge/munged.pid" "$DIR/slurmctld.pid" $(for node in $(nodes_in_conf); do echo "$DIR/slurmd-$node.pid"; done); do
    if alive "$pidfile"; then echo "running  $(basename "$pidfile" .pid) (pid $(cat "$pidfile"))"; else echo "stopped  $(basename "$pidfile" .pid)"; fi
  done
  SLURM_CONF="$CONF" sinfo -N -o "%N %t %c %m" 2>&1 || true
}

case "${1:-}" in
  up) up "${2:-2}" ;;
  down) down ;;
  status) status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 up [NODES] | down | status | env" >&2; exit 2 ;;
esac

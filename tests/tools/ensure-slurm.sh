#!/bin/bash
# A one-node Slurm for the docker tier's Slurm tests: Debian's slurm-wlm and munge, daemons
# started directly as root (no systemd), configuration under $LLEM_SLURM_BASE. Idempotent:
# does nothing when the node is already up. Clients need SLURM_CONF=$LLEM_SLURM_BASE/slurm.conf.
# Test-only: llem never starts Slurm for its users (a site's Slurm is the site's).
# LLEM_SLURM_GPUS=N: a node that declares N GPUs as GRES (GresTypes=gpu, Gres=gpu:N), for the
# simulated GPUs of llem --simulate-gpus, as a cluster of its own beside the plain one (its own
# ports and base, default /tmp/llem-slurm-gres), so the plain node's tests are untouched. Slurm's
# gres/gpu drops a GPU that has no File= ("Removing file-less GPU ... from final GRES list": the
# node then registers 0 < N GPUs and is INVAL), and wants a character device there: gres.conf
# names N placeholders, $BASE/dev/nvidia0..., made as copies of /dev/null (1:3). Slurm then sets
# CUDA_VISIBLE_DEVICES for each task as on a GPU node.
set -euo pipefail
GPUS=${LLEM_SLURM_GPUS:-0}
if [ "$GPUS" -gt 0 ]; then
  BASE=${LLEM_SLURM_BASE:-/tmp/llem-slurm-gres}
  CLUSTER=llemgres CTLD_PORT=6917 SLURMD_PORT=6918
else
  BASE=${LLEM_SLURM_BASE:-/tmp/llem-slurm}
  CLUSTER=llemtest CTLD_PORT=6817 SLURMD_PORT=6818
fi
export SLURM_CONF=$BASE/slurm.conf
HOST=$(hostname -s)

if [ -f "$SLURM_CONF" ] && command -v sinfo >/dev/null && sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "ensure-slurm: needs root to install and start Slurm (or start one and set SLURM_CONF)" >&2
  exit 1
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  echo "ensure-slurm: installing slurm-wlm and munge (Debian packages)" >&2
  apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi
mkdir -p "$BASE"/{state,spool,log,run}
[ -s /etc/munge/munge.key ] || { mungekey --create --force; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
install -d -o munge -g munge -m 0755 /run/munge
if ! munge -n >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  sleep 1
fi
munge -n | unmunge >/dev/null
CPUS=$(nproc)
MEM=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
cat > "$SLURM_CONF" <<CONF
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=30
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM State=UNKNOWN$([ "$GPUS" -gt 0 ] && echo " Gres=gpu:$GPUS")
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
$([ "$GPUS" -gt 0 ] && echo "GresTypes=gpu")
CONF
if [ "$GPUS" -gt 0 ]; then
  mkdir -p "$BASE/dev"
  for i in $(seq 0 $((GPUS - 1))); do
    [ -c "$BASE/dev/nvidia$i" ] || mknod "$BASE/dev/nvidia$i" c 1 3
  done
  echo "Name=gpu File=$BASE/dev/nvidia[0-$((GPUS - 1))]" > "$BASE/gres.conf"
fi
for pidfile in "$BASE/run/slurmctld.pid" "$BASE/run/slurmd.pid"; do  # a half-started earlier try
  [ -s "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
done
sleep 1
slurmctld
slurmd
for _ in $(seq 1 60); do
  if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    exit 0
  fi
  scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
  sleep 1
done
echo "ensure-slurm: the node did not come up; see $BASE/log/" >&2
exit 1

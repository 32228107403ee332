#!/bin/bash
# A one-node Slurm for the docker tier's Slurm tests: Debian's slurm-wlm and munge, daemons
# started directly as root (no systemd), configuration under $LLEM_SLURM_BASE. Idempotent:
# does nothing when the node is already up. Clients need SLURM_CONF=$LLEM_SLURM_BASE/slurm.conf.
# Test-only: llem never starts Slurm for its users (a site's Slurm is the site's).
set -euo pipefail
BASE=${LLEM_SLURM_BASE:-/tmp/llem-slurm}
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
ClusterName=llemtest
SlurmctldHost=$HOST
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
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
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

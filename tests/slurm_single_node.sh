#!/bin/bash
# A throw-away single-node SLURM (Debian's slurm-wlm + munge) for tests/test_distributed.py.
# Usage: unshare --net bash tests/slurm_single_node.sh WORKDIR COMMAND...
# Runs inside a private network namespace (only loopback exists there, so no daemon can listen on
# any other address), starts munged, slurmctld and slurmd with every file under WORKDIR, waits until
# the node is idle, runs COMMAND (e.g. sbatch --wait ...) and stops the daemons again.
set -euo pipefail
D=$(realpath "$1"); shift
mkdir -p "$D/state" "$D/spool" "$D/munge"
chmod 700 "$D/munge"
ip link set lo up
dd if=/dev/urandom of="$D/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$D/munge/munge.key"
# daemons stay in the foreground (children of this script, in its process group), so killing the group
# (what the test does on a time-out) stops them all; the trap stops them on a normal exit
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
munged --foreground --force --key-file="$D/munge/munge.key" --socket="$D/munge/munge.socket" \
  --pid-file="$D/munge/munged.pid" --log-file="$D/munge/munged.log" --seed-file="$D/munge/munge.seed" &
pids+=($!)
for _ in $(seq 1 50); do [ -S "$D/munge/munge.socket" ] && break; sleep 0.1; done
cat > "$D/slurm.conf" <<EOF
ClusterName=jaxcnn-test
SlurmctldHost=localhost(127.0.0.1)
AuthType=auth/munge
AuthInfo=socket=$D/munge/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/slurmctld.log
SlurmdLogFile=$D/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
export SLURM_CONF="$D/slurm.conf"
slurmctld -D -f "$SLURM_CONF" &
pids+=($!)
slurmd -D -f "$SLURM_CONF" -N localhost &
pids+=($!)
for _ in $(seq 1 60); do
  if sinfo -h -o %t 2>/dev/null | grep -q idle; then break; fi
  sleep 0.5
done
sinfo -h -o %t | grep -q idle || { echo "slurm did not come up within 30 s" >&2; tail -5 "$D"/*.log >&2; exit 3; }
"$@"

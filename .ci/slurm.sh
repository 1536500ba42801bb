#!/usr/bin/env bash
# A one-node SLURM on this machine, for tests/test_cluster_jobqueue.py's real-SLURM tests:
# installs Debian's packages (slurmctld, slurmd, slurm-client, munge), writes a slurm.conf for
# this host (its hostname, CPUs and memory as `slurmd -C` reports them), starts munged,
# slurmctld and slurmd as root on loopback and waits until `sinfo` shows the node idle.
#
# Needs root and apt-get (Debian 12). Safe to run again: a SLURM that already answers is left
# alone. Exits non-zero with the reason on stderr when SLURM cannot be started; .ci/run goes on
# without it and the SLURM tests skip with their own reason.
set -euo pipefail

say() { echo "slurm.sh: $*" >&2; }
fail() { say "$*"; exit 1; }

# A node that is up (idle, or running an earlier run's jobs) is all the tests need.
if sinfo -h -o "%t" 2>/dev/null | grep -qxE "idle|mix|alloc"; then
    say "a SLURM node is already up here"; exit 0
fi
[ "$(id -u)" = 0 ] || fail "needs root (to install packages and run slurmd)"
marker="Written by distconv's .ci/slurm.sh"
if [ -f /etc/slurm/slurm.conf ] && ! grep -q "$marker" /etc/slurm/slurm.conf; then
    fail "/etc/slurm/slurm.conf exists and is not this script's: leaving that SLURM alone"
fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
        || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || fail "no apt-get: install slurm-wlm and munge by hand"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || fail "apt-get update failed"
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge \
        >/dev/null || fail "apt-get install slurmctld slurmd slurm-client munge failed"
fi

# munge: the key the package made (or a new one), its socket directory, the daemon as munge.
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile /etc/munge/munge.key
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n </dev/null >/dev/null 2>&1; then
    runuser -u munge -- munged || fail "munged did not start"
fi

# slurm.conf: the node as slurmd sees it (CPUs, sockets, cores, threads, memory).
node=$(slurmd -C | head -n 1)
case "$node" in NodeName=*) ;; *) fail "slurmd -C did not describe this node: $node" ;; esac
host=$(hostname -s)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat >/etc/slurm/slurm.conf <<EOF
# ${marker}: one node, daemons as root, loopback only.
ClusterName=distconv
SlurmctldHost=${host}(127.0.0.1)
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# No cgroups in a container: processes tracked by their parent ids, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
# A cancelled job's processes get SIGTERM, then SIGKILL this many seconds later.
KillWait=5
${node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
EOF

pgrep -x slurmctld >/dev/null || slurmctld || fail "slurmctld did not start (/var/log/slurm)"
pgrep -x slurmd >/dev/null || slurmd || fail "slurmd did not start (/var/log/slurm)"

for _ in $(seq 60); do
    state=$(sinfo -h -o "%t" 2>/dev/null || true)
    if [[ "$state" =~ ^(idle|mix|alloc)$ ]]; then
        say "node ${host} idle: $(sinfo -h -o '%P %a %D %c CPUs %m MB')"; exit 0
    fi
    # A node left down or drained by an earlier run of this script comes back.
    case "$state" in down*|drain*) scontrol update NodeName="$host" State=RESUME || true ;; esac
    sleep 1
done
fail "the node is not idle after 60 s (sinfo: ${state:-no answer}); see /var/log/slurm"

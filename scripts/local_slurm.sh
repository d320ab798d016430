#!/usr/bin/env bash
# A one-node SLURM cluster on localhost, for trying the cluster launchers (and for the tests) on one machine.
#
#   scripts/local_slurm.sh install        # as root: Debian's slurm-wlm, slurmdbd, munge and mariadb-server
#   scripts/local_slurm.sh start DIR      # as root: start the cluster, its state in DIR; prints SLURM_CONF
#   export SLURM_CONF=DIR/slurm.conf      # then sbatch, squeue, sacct, scancel and the launchers use it:
#   python -m bench -m hydra/launcher=slurm_cpu 'sweep.seq_lens=[256],[1024]'
#   scripts/local_slurm.sh stop DIR       # stop what `start DIR` started (by pid), nothing else
#
# One node (this machine's CPUs and memory, as `slurmd -C` reports them) in one partition, `local`,
# whose CPUs up to 4 jobs may share (the timing lock, not SLURM, keeps measuring jobs apart).
# Accounting (slurmdbd on a private MariaDB) is there because submitit reads job states with sacct.
# No init system is assumed: munged, mariadbd, slurmdbd, slurmctld and slurmd run in the foreground
# of background processes whose pids are kept in DIR/pids; proctrack/linuxproc and task/none need no
# cgroups. Time limits are enforced every ~30 s (slurmctld's fixed period) plus KillWait (2 s here).
set -euo pipefail

PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

die() {
    echo "local_slurm: $*" >&2
    exit 1
}

usage() {
    die "usage: $0 install | start DIR | stop DIR"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start NAME LOG COMMAND...: run a daemon in the foreground of a detached background process; record its pid
start_daemon() {
    local name=$1 log=$2
    shift 2
    setsid "$@" >"$log" 2>&1 </dev/null &
    echo "$name $!" >>"$DIR/pids"
}

# wait_for SECONDS WHAT COMMAND...: poll until COMMAND succeeds
wait_for() {
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            stop
            die "$what did not come up within $seconds s; logs in $DIR/log"
        fi
        sleep 0.2
    done
}

install() {
    [ "$(id -u)" = 0 ] || die "install needs root (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${PACKAGES[@]}" >/dev/null
}

stop() {
    [ -f "$DIR/pids" ] || return 0
    if [ -f "$DIR/slurm.conf" ] && command -v scancel >/dev/null; then
        # the jobs first, so that no slurmstepd is left behind; up to 15 s for them to end
        export SLURM_CONF=$DIR/slurm.conf
        if timeout 10 scancel --user=root >/dev/null 2>&1; then
            for _ in $(seq 75); do
                [ -n "$(timeout 5 squeue --noheader 2>/dev/null)" ] || break
                sleep 0.2
            done
        fi
    fi
    # the daemons all at once (each takes about 2 s to shut down); whatever still runs after 10 s gets SIGKILL
    local name pid alive
    while read -r name pid; do
        kill -TERM "$pid" 2>/dev/null || true
    done <"$DIR/pids"
    for _ in $(seq 50); do
        alive=0
        while read -r name pid; do
            if kill -0 "$pid" 2>/dev/null; then alive=1; fi
        done <"$DIR/pids"
        [ $alive = 1 ] || break
        sleep 0.2
    done
    while read -r name pid; do
        if kill -KILL "$pid" 2>/dev/null; then
            echo "local_slurm: killed $name ($pid), still running 10 s after SIGTERM" >&2
        fi
    done <"$DIR/pids"
    rm -f "$DIR/pids"
}

node_state() {
    SLURM_CONF=$DIR/slurm.conf sinfo --noheader --format=%T
}

node_is_idle() {
    [ "$(node_state)" = idle ]
}

start() {
    [ "$(id -u)" = 0 ] || die "start needs root (munged, slurmd and the jobs run as root here)"
    local missing=()
    for binary in munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sbatch sacct; do
        command -v "$binary" >/dev/null || missing+=("$binary")
    done
    [ ${#missing[@]} = 0 ] || die "not installed: ${missing[*]} (run: $0 install)"
    [ ! -f "$DIR/pids" ] || die "$DIR already holds a running cluster (stop it first: $0 stop $DIR)"
    mkdir -p "$DIR"/{log,munge,db,ctld,spool}
    DIR=$(cd "$DIR" && pwd)
    chmod 700 "$DIR/munge"

    local host db_port dbd_port ctld_port slurmd_port node
    host=$(hostname -s)
    db_port=$(free_port) dbd_port=$(free_port) ctld_port=$(free_port) slurmd_port=$(free_port)
    node=$(slurmd -C | head -n 1) # NodeName=<host> CPUs=... RealMemory=...: this machine as slurmd sees it

    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$DIR/munge/munge.key"
    start_daemon munged "$DIR/log/munged.out" munged --foreground --force --key-file="$DIR/munge/munge.key" \
        --socket="$DIR/munge/munge.socket" --pid-file="$DIR/munge/munged.pid" --seed-file="$DIR/munge/munged.seed" \
        --log-file="$DIR/log/munged.log"

    mariadb-install-db --no-defaults --user=root --datadir="$DIR/db" --auth-root-authentication-method=normal \
        --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed; see $DIR/log"
    start_daemon mariadbd "$DIR/log/mariadbd.log" mariadbd --no-defaults --user=root --datadir="$DIR/db" \
        --socket="$DIR/mariadb.socket" --port="$db_port" --bind-address=127.0.0.1 --pid-file="$DIR/mariadbd.pid" \
        --innodb-buffer-pool-size=32M --innodb-buffer-pool-dump-at-shutdown=0 --innodb-buffer-pool-load-at-startup=0 \
        --skip-log-bin

    cat >"$DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$dbd_port
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=$DIR/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
EOF
    chmod 600 "$DIR/slurmdbd.conf"

    cat >"$DIR/slurm.conf" <<EOF
ClusterName=local$ctld_port
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$dbd_port
AccountingStoragePass=$DIR/munge/munge.socket
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MessageTimeout=5
KillWait=2
OverTimeLimit=0
InactiveLimit=0
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE OverSubscribe=FORCE:4 State=UP
EOF
    export SLURM_CONF=$DIR/slurm.conf # slurmdbd reads slurmdbd.conf from the same folder

    wait_for 60 "mariadbd" bash -c "exec 3<>/dev/tcp/127.0.0.1/$db_port"
    start_daemon slurmdbd "$DIR/log/slurmdbd.out" slurmdbd -D
    wait_for 60 "slurmdbd" bash -c "exec 3<>/dev/tcp/127.0.0.1/$dbd_port"
    start_daemon slurmctld "$DIR/log/slurmctld.out" slurmctld -D -i
    wait_for 60 "slurmctld" scontrol ping
    start_daemon slurmd "$DIR/log/slurmd.out" slurmd -D
    wait_for 60 "the node (state: $(node_state 2>/dev/null || echo unknown))" node_is_idle
    echo "export SLURM_CONF=$SLURM_CONF"
}

[ $# -ge 1 ] || usage
case $1 in
install)
    install
    ;;
start | stop)
    [ $# = 2 ] || usage
    DIR=$2
    "$1"
    ;;
*)
    usage
    ;;
esac

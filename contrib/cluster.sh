#!/usr/bin/env bash
# A throwaway local cluster for lunafs' shared backend: etcd (metadata) and Ceph (RADOS data),
# on loopback only, every file and PID under DIR.
#
#   contrib/cluster.sh start DIR [--members 3] [--cephfs]
#       etcd members and Ceph OSDs (1 by default); --cephfs adds an MDS and a CephFS
#       (`cephfs`, for the benchmarks' ceph-fuse peer)
#   contrib/cluster.sh stop DIR                  # ends what start started, by PID
#
# start writes DIR/env (source it): LUNAFS_ETCD (client endpoints), LUNAFS_RADOS (the data
# URL for `lunafs format --data`), CEPH_CONF. Ports: LUNAFS_CLUSTER_PORT (default 23790) and
# the next 29. Ceph runs one monitor and memstore OSDs (RAM, no disks), auth off, pool `lunafs`
# of size 1, or 3 (min_size 2) with --members 3, so one member of each may die. Each OSD holds
# up to LUNAFS_CLUSTER_OSD_BYTES (default 2 GiB) of RAM.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR [--members 1|3]" >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1
dir=$(realpath -m "$2")
shift 2
members=1
cephfs=0
while [ $# -gt 0 ]; do
  case $1 in
    --members) members=${2:?}; shift 2 ;;
    --cephfs) cephfs=1; shift ;;
    *) usage ;;
  esac
done
[ "$members" = 1 ] || [ "$members" = 3 ] || usage
base=${LUNAFS_CLUSTER_PORT:-23790}
conf="$dir/ceph.conf"

stop() {
  local pids=()
  for f in "$dir"/pids/*.pid; do
    [ -e "$f" ] || continue
    pids+=("$(cat "$f")")
  done
  [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null || true
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  rm -rf "$dir"/pids
}

wait_for() { # what, seconds, command...
  local what=$1 secs=$2
  shift 2
  for _ in $(seq $((secs * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "cluster.sh: $what did not come up; logs in $dir/log" >&2
  return 1
}

start_etcd() {
  local cluster="" i
  for i in $(seq 0 $((members - 1))); do
    cluster+="${cluster:+,}e$i=http://127.0.0.1:$((base + 10 + i))"
  done
  for i in $(seq 0 $((members - 1))); do
    mkdir -p "$dir/etcd/e$i"
    etcd --name "e$i" --data-dir "$dir/etcd/e$i" \
      --listen-client-urls "http://127.0.0.1:$((base + i))" \
      --advertise-client-urls "http://127.0.0.1:$((base + i))" \
      --listen-peer-urls "http://127.0.0.1:$((base + 10 + i))" \
      --initial-advertise-peer-urls "http://127.0.0.1:$((base + 10 + i))" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --max-txn-ops 10000 --max-request-bytes 33554432 \
      --quota-backend-bytes 8589934592 \
      >"$dir/log/etcd-e$i.log" 2>&1 &
    echo $! >"$dir/pids/etcd-e$i.pid"
  done
  for i in $(seq 0 $((members - 1))); do
    wait_for "etcd member e$i" 30 etcdctl --endpoints "127.0.0.1:$((base + i))" endpoint health
  done
}

start_ceph() {
  local mon="127.0.0.1:$((base + 20))" fsid i
  fsid=$(cat /proc/sys/kernel/random/uuid)
  mkdir -p "$dir/ceph/run" "$dir/ceph/mon"
  cat >"$conf" <<EOF
[global]
fsid = $fsid
mon host = v2:$mon
public network = 127.0.0.0/8
auth cluster required = none
auth service required = none
auth client required = none
ms bind ipv6 = false
run dir = $dir/ceph/run
admin socket = $dir/ceph/run/\$name.asok
log file = $dir/log/ceph-\$name.log
pid file = $dir/pids/ceph-\$name.pid
osd pool default size = $members
osd pool default min size = $(( members == 3 ? 2 : 1 ))
# Every OSD is on this one host: one peer's report (a refused connection, at once after a
# kill) must be enough to mark an OSD down, or its PGs would wait for the report timeout.
mon osd min down reporters = 1
mon osd reporter subtree level = osd
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
osd objectstore = memstore
memstore device bytes = ${LUNAFS_CLUSTER_OSD_BYTES:-2147483648}
osd data = $dir/ceph/\$name
mds data = $dir/ceph/\$name
mgr data = $dir/ceph/\$name
osd class load list = *
osd class default list = *
mon data = $dir/ceph/mon/\$name
EOF
  monmaptool --create --fsid "$fsid" --addv a "[v2:$mon]" "$dir/ceph/monmap" >/dev/null
  ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/ceph/monmap" >>"$dir/log/setup.log" 2>&1
  ceph-mon -c "$conf" -i a >>"$dir/log/setup.log" 2>&1
  wait_for "the Ceph monitor" 30 ceph -c "$conf" --connect-timeout 2 mon stat
  # The manager gathers the space statistics (statfs of a lunafs mount, `ceph df`).
  mkdir -p "$dir/ceph/mgr.x"
  ceph-mgr -c "$conf" -i x >>"$dir/log/setup.log" 2>&1
  for i in $(seq 0 $((members - 1))); do
    ceph -c "$conf" osd create >>"$dir/log/setup.log" 2>&1
    mkdir -p "$dir/ceph/osd.$i"
    ceph-osd -c "$conf" -i "$i" --mkfs >>"$dir/log/setup.log" 2>&1
    ceph-osd -c "$conf" -i "$i" >>"$dir/log/setup.log" 2>&1
  done
  pool lunafs 32
  wait_for "the Ceph OSDs" 60 timeout 5 rados -c "$conf" -p lunafs put cluster-probe "$conf"
  rados -c "$conf" -p lunafs rm cluster-probe
  wait_for "the Ceph space statistics" 60 sh -c "rados -c '$conf' df | grep -q 'total_space *[1-9]'"
  [ "$cephfs" = 0 ] || start_cephfs
}

pool() { # name pgs
  ceph -c "$conf" osd pool create "$1" "$2" >>"$dir/log/setup.log" 2>&1
  if [ "$members" = 1 ]; then
    ceph -c "$conf" osd pool set "$1" size 1 --yes-i-really-mean-it >>"$dir/log/setup.log" 2>&1
  fi
}

start_cephfs() {
  pool cephfs_meta 16
  pool cephfs_data 32
  ceph -c "$conf" fs new cephfs cephfs_meta cephfs_data >>"$dir/log/setup.log" 2>&1
  mkdir -p "$dir/ceph/mds.a"
  ceph-mds -c "$conf" -i a >>"$dir/log/setup.log" 2>&1
  wait_for "the Ceph MDS" 60 sh -c "ceph -c '$conf' mds stat | grep -q 'up:active'"
}

case $cmd in
  start)
    [ ! -e "$dir/pids" ] || { echo "cluster.sh: $dir holds a running cluster; stop it first" >&2; exit 1; }
    rm -rf "$dir"
    mkdir -p "$dir/log" "$dir/pids"
    trap 'stop; exit 1' ERR
    start=$(date +%s)
    start_etcd
    start_ceph
    endpoints=""
    for i in $(seq 0 $((members - 1))); do endpoints+="${endpoints:+,}127.0.0.1:$((base + i))"; done
    cat >"$dir/env" <<EOF
export LUNAFS_ETCD=$endpoints
export LUNAFS_RADOS='rados://lunafs?conf=$dir/ceph.conf'
export CEPH_CONF=$dir/ceph.conf
EOF
    echo "cluster up in $(( $(date +%s) - start )) s: etcd $endpoints, Ceph $members OSD(s); source $dir/env"
    ;;
  stop) stop ;;
  *) usage ;;
esac

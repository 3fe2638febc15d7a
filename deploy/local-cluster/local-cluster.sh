#!/usr/bin/env bash
# Xiaohe Identity on several hosts of this machine: each host is a network namespace
# with its own address, running `xiaohe-identity serve` with its own workers, and all of
# them share one PostgreSQL and one Redis or Redis Cluster. A store is reached through
# its Unix socket (a network namespace does not hide the file system) or at an address of
# this machine's end of the hosts' links, SUBNET.N.1, which every host can reach.
#
#   local-cluster.sh up       net, then start; prints the targets
#   local-cluster.sh net      make the hosts and their links only (start a store on SUBNET.1.1)
#   local-cluster.sh start    migrate, then start a server in each host; prints the targets
#   local-cluster.sh kill N   kill every process of host N at once (a host that dies)
#   local-cluster.sh down     stop the servers and remove the hosts
#   local-cluster.sh status   the hosts and whether their servers run
#
# Settings (environment):
#   RUN_DIR        where data dirs, logs and pid files go (required)
#   HOSTS          how many hosts (2)
#   WORKERS        workers per host (2)
#   NAME           prefix of namespace and interface names, at most 8 characters (xhlc)
#   SUBNET         the first two octets of the hosts' /24 networks (10.231): host N
#                  is SUBNET.N.2, this machine's end of its link SUBNET.N.1
#   PORT           the gRPC port on every host (50051)
#   SHARED_OUTBOX  1: every host's dev SMS outbox is RUN_DIR/outbox, so one file holds
#                  the codes whichever host delivered them (load tests read it)
#   XIAOHE_IDENTITY_DATABASE_URL, XIAOHE_IDENTITY_REDIS_URL, XIAOHE_IDENTITY_KEYRING_FILE
#                  the shared stores and key ring (required; Unix-socket URLs, e.g.
#                  postgresql://identity@/identity?host=/var/run/postgresql and
#                  unix:///run/redis/redis.sock, or XIAOHE_IDENTITY_REDIS_CLUSTER=true with
#                  a node at redis://10.231.1.1:PORT)
#   Any other XIAOHE_IDENTITY_* setting is passed to every server unchanged.
#
# Needs root (ip netns) and the project's virtualenv (`make .venv/.installed`).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CLI="${XIAOHE_IDENTITY_CLI:-$ROOT/.venv/bin/xiaohe-identity}"
HOSTS="${HOSTS:-2}"
WORKERS="${WORKERS:-2}"
NAME="${NAME:-xhlc}"
SUBNET="${SUBNET:-10.231}"
PORT="${PORT:-50051}"

die() { echo "local-cluster: $*" >&2; exit 2; }

need_run_dir() { [[ -n "${RUN_DIR:-}" ]] || die "set RUN_DIR"; mkdir -p "$RUN_DIR"; }

host_ns() { echo "${NAME}-$1"; }

up_host() {
  local n="$1" ns veth_root veth_host
  ns="$(host_ns "$n")"
  veth_root="${NAME}r$n"
  veth_host="${NAME}h$n"
  ip netns add "$ns"
  ip link add "$veth_root" type veth peer name "$veth_host"
  ip link set "$veth_host" netns "$ns"
  ip addr add "$SUBNET.$n.1/24" dev "$veth_root"
  ip link set "$veth_root" up
  ip -n "$ns" addr add "$SUBNET.$n.2/24" dev "$veth_host"
  ip -n "$ns" link set "$veth_host" up
  ip -n "$ns" link set lo up
  ip -n "$ns" route add default via "$SUBNET.$n.1"
}

start_server() {
  local n="$1" ns data
  ns="$(host_ns "$n")"
  data="$RUN_DIR/host-$n"
  mkdir -p "$data"
  if [[ "${SHARED_OUTBOX:-0}" == 1 ]]; then
    mkdir -p "$RUN_DIR/outbox"
    ln -sfn "$RUN_DIR/outbox" "$data/outbox"
  fi
  # setsid: the server and its workers form one process group, stopped together.
  XIAOHE_IDENTITY_LISTEN="$SUBNET.$n.2:$PORT" \
  XIAOHE_IDENTITY_ALLOW_PLAINTEXT=true \
  XIAOHE_IDENTITY_METRICS_LISTEN="127.0.0.1:9464" \
  XIAOHE_IDENTITY_DATA_DIR="$data" \
  XIAOHE_IDENTITY_WORKERS="$WORKERS" \
    setsid ip netns exec "$ns" "$CLI" serve >"$RUN_DIR/host-$n.log" 2>&1 &
  echo $! >"$RUN_DIR/host-$n.pid"
}

check_settings() {
  need_run_dir
  [[ ${#NAME} -le 8 ]] || die "NAME must be at most 8 characters"
}

cmd_net() {
  check_settings
  for n in $(seq 1 "$HOSTS"); do up_host "$n"; done
}

cmd_start() {
  check_settings
  for var in XIAOHE_IDENTITY_DATABASE_URL XIAOHE_IDENTITY_REDIS_URL XIAOHE_IDENTITY_KEYRING_FILE; do
    [[ -n "${!var:-}" ]] || die "set $var (the stores and key ring every host shares)"
  done
  XIAOHE_IDENTITY_DATA_DIR="$RUN_DIR/migrate" "$CLI" migrate >/dev/null
  for n in $(seq 1 "$HOSTS"); do start_server "$n"; done
  for n in $(seq 1 "$HOSTS"); do echo "$SUBNET.$n.2:$PORT"; done
}

cmd_kill() {
  need_run_dir
  local ns pids
  ns="$(host_ns "$1")"
  pids="$(ip netns pids "$ns" || true)"
  [[ -z "$pids" ]] || kill -KILL $pids 2>/dev/null || true
}

cmd_down() {
  need_run_dir
  for n in $(seq 1 "$HOSTS"); do
    local pidfile="$RUN_DIR/host-$n.pid"
    if [[ -f "$pidfile" ]]; then
      kill -TERM -- "-$(cat "$pidfile")" 2>/dev/null || true
    fi
  done
  for _ in $(seq 1 100); do
    local alive=0
    for n in $(seq 1 "$HOSTS"); do
      [[ -z "$(ip netns pids "$(host_ns "$n")" 2>/dev/null || true)" ]] || alive=1
    done
    [[ $alive -eq 0 ]] && break
    sleep 0.1
  done
  for n in $(seq 1 "$HOSTS"); do
    cmd_kill "$n" 2>/dev/null || true
    ip netns del "$(host_ns "$n")" 2>/dev/null || true
    ip link del "${NAME}r$n" 2>/dev/null || true
    rm -f "$RUN_DIR/host-$n.pid"
  done
}

cmd_status() {
  for n in $(seq 1 "$HOSTS"); do
    local ns state="absent"
    ns="$(host_ns "$n")"
    if ip netns list | grep -qw "$ns"; then
      state="up, server $([[ -n "$(ip netns pids "$ns")" ]] && echo running || echo stopped)"
    fi
    echo "host $n ($SUBNET.$n.2:$PORT): $state"
  done
}

case "${1:-}" in
  up) cmd_net; cmd_start ;;
  net) cmd_net ;;
  start) cmd_start ;;
  kill) [[ -n "${2:-}" ]] || die "kill which host?"; cmd_kill "$2" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) die "usage: local-cluster.sh up|net|start|kill N|down|status" ;;
esac

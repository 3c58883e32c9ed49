#!/usr/bin/env bash
# ceph-rgw.sh - throwaway single-node Ceph RADOS Gateway (S3) on 127.0.0.1
# for granary's S3 integration tests.
#
# Usage:
#   scripts/ceph-rgw.sh start  [DIR]   bring up mon + osd + radosgw, create the
#                                      test user, write DIR/env, print it
#   scripts/ceph-rgw.sh stop   [DIR]   kill the daemons, remove DIR (idempotent)
#   scripts/ceph-rgw.sh status [DIR]   exit 0 iff the gateway answers HTTP
#
# DIR defaults to a fresh `mktemp -d /tmp/granary-rgw.XXXXXX` on start, and to
# the directory of the most recent start (recorded in /tmp/granary-rgw.last,
# override with GRANARY_RGW_LAST) for stop/status.  A DIR given to start must
# be empty or not exist.  stop only deletes a DIR that start created/marked.
#
# DIR/env (also printed on stdout; all chatter goes to stderr) holds
#   GRANARY_TEST_S3_ENDPOINT, GRANARY_TEST_S3_ACCESS_KEY,
#   GRANARY_TEST_S3_SECRET_KEY, GRANARY_TEST_S3_REGION, GRANARY_RGW_DIR
# as plain KEY=VALUE lines: `set -a; . DIR/env; set +a` to export them.
#
# Environment knobs:
#   RGW_PORT                 fixed port for the S3 endpoint (default: a free one)
#   CEPH_MON_PORT            fixed monitor port (default: a free one)
#   CEPH_RGW_MEMSTORE_BYTES  OSD "disk" size, held in RAM (default 6 GiB)
#   CEPH_RGW_TIMEOUT         total bring-up timeout in seconds (default 180)
#
# Needs (Debian bookworm, ceph 16.2): ceph-mon ceph-osd radosgw ceph-common,
# plus curl and python3.  No ceph-mgr: RGW only talks to mon and osd, and
# nothing here needs mgr (pool creation is a mon command; we don't autoscale;
# `ceph -s` says "no daemons active" for mgr, which is harmless).
#
# Ceph 16.2 RGW quirks seen with it (relevant to tests): CompleteMultipartUpload
# answers <ETag></ETag> (empty; HEAD/GET/List do show "<md5-of-md5s>-N");
# ListObjects with EncodingType=url percent-encodes "/" too ("a%2Fb%20c");
# If-None-Match: * and If-Match on PUT are enforced (412); x-amz-version-id
# is only sent for versioning-enabled buckets.
#
# Why the odd settings in the generated ceph.conf:
#   * Everything (conf, mon/osd/rgw data, run dir, admin sockets, pid files,
#     logs, crash dir, keyring) lives under DIR and every tool gets `-c`, so
#     nothing touches /etc/ceph, /var/lib/ceph, /var/log/ceph or /var/run/ceph,
#     and two instances with different DIRs/ports don't collide (OSD messenger
#     ports are picked from 6800-7300 by the OSD itself, skipping busy ones).
#   * osd objectstore = memstore: no block device or bluestore setup; objects
#     live in RAM, sized by `memstore device bytes` (CEPH_RGW_MEMSTORE_BYTES).
#   * osd pool default size/min size = 1, osd crush chooseleaf type = 0: one
#     OSD must be enough for every PG to go active+clean.
#   * auth ... required = none: no cephx keys to distribute (a throwaway mon
#     keyring is still handed to `ceph-mon --mkfs`).
#   * ms mon client mode = crc (and the other ms modes): with auth none the
#     default "secure crc" makes radosgw hang for minutes talking to the mon.
#   * mon max pg per osd = 1000, default pg num 8, autoscale off: RGW
#     creates its pools (4 at start-up, 3 more with the first bucket/object)
#     and every PG sits on the one OSD; at the stock 32 PGs per pool the
#     stock 250-PG-per-OSD cap gets close and the mon would refuse further
#     pools.  Few PGs also keep the OSD cheap, and there is no mgr to
#     autoscale anyway.
#   * mon data avail warn/crit lowered: the mon would shut itself down if the
#     filesystem under DIR is >95% full; that's not what a test should hit.
#   * rgw frontends = beast ... tcp_nodelay=1: without it small responses
#     stall ~40 ms (Nagle vs delayed ACK) on every keep-alive request.
#   * rgw gc obj min wait / processor period lowered: tails of deleted or
#     overwritten objects (multipart parts, >4 MiB bodies) are only freed by
#     GC, default 2 h later, and memstore space is RAM (a 2 GiB checkpoint
#     bench at 60 s got the OSD OOM-killed; 5 s wait, 10 s period).
#   * radosgw runs as client.rgw.gw; radosgw-admin and ceph run as
#     client.admin with no admin socket so they never fight over the
#     gateway's socket.
#   * Daemons run in the foreground (-f) under setsid/nohup with stdin and
#     stdout/stderr detached, so a caller capturing our stdout doesn't hang.
#
# S3 region: RGW's default zonegroup is "default", but Pacific accepts any
# SigV4 credential-scope region; we advertise us-east-1 (what SDKs default to).

set -euo pipefail

readonly ACCESS_KEY=granary-test
readonly SECRET_KEY=granary-test-secret
readonly REGION=us-east-1
readonly LAST_FILE=${GRANARY_RGW_LAST:-/tmp/granary-rgw.last}
readonly MARKER=.granary-rgw
readonly RGW_NAME=client.rgw.gw

log() { printf 'ceph-rgw: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

PY=python3
[[ -x /usr/bin/python3 ]] && PY=/usr/bin/python3

port_free() { # port_free PORT: nothing listens on 127.0.0.1:PORT
  "$PY" -c 'import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)' "$1"
}

free_port() {
  "$PY" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# --- helpers operating on $DIR ---------------------------------------------

ceph_cli() {
  timeout "$(remaining)" ceph -c "$DIR/ceph.conf" --connect-timeout 30 "$@"
}

# live_pids NAME...: echo the pids of those daemons (spawn names: rgw, osd,
# mon) that are still alive.  Both the pid we recorded at spawn time and the
# daemon's own pid file are consulted; a pid only counts if its command line
# references DIR (guards against pid reuse; zombies have an empty one).
live_pids() {
  local name f pid
  for name in "$@"; do
    for f in "$DIR/run/$name.spawn.pid" "$DIR/run/$name".*.pid; do
      [[ -f $f ]] || continue
      pid=$(<"$f") || continue
      [[ $pid =~ ^[0-9]+$ ]] || continue
      if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF "$DIR/ceph.conf"; then
        echo "$pid"
      fi
    done
  done | sort -u
}

# stop_group NAME...: TERM, wait up to 5 s, then KILL.
stop_group() {
  local pids i
  pids=$(live_pids "$@")
  [[ -n $pids ]] || return 0
  # shellcheck disable=SC2086  # word splitting of the pid list is intended
  kill -TERM $pids 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    pids=$(live_pids "$@")
    [[ -n $pids ]] || return 0
    sleep 0.1
  done
  log "$* still alive after TERM, sending KILL: $pids"
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  for ((i = 0; i < 30; i++)); do
    [[ -n $(live_pids "$@") ]] || return 0
    sleep 0.1
  done
  return 1
}

# Order matters: an OSD told to stop first reports to the monitor and waits
# up to `osd mon shutdown timeout` (5 s) for it, so the mon goes last.
stop_daemons() {
  local rc=0
  stop_group rgw || rc=1
  stop_group osd || rc=1
  stop_group mon || rc=1
  return $rc
}

# spawn NAME CMD...: run a daemon in the foreground, detached, pid recorded.
spawn() {
  local name=$1; shift
  setsid nohup "$@" </dev/null >>"$DIR/log/$name.out" 2>&1 &
  echo $! >"$DIR/run/$name.spawn.pid"
}

alive() { # alive NAME
  local pid
  pid=$(<"$DIR/run/$1.spawn.pid") && kill -0 "$pid" 2>/dev/null
}

# Print the daemons' stderr and the tail of the log of the step that failed
# ($PHASE_LOG, set as bring-up progresses).
show_logs() {
  local f
  for f in "$DIR"/log/*.out ${PHASE_LOG:+"$DIR/log/$PHASE_LOG"}; do
    [[ -s $f ]] || continue
    printf '\n===== %s (tail) =====\n' "$f" >&2
    tail -n 25 "$f" >&2 || true
  done
  printf '\n(all logs: %s/log, removed on exit)\n' "$DIR" >&2
}

fail() {
  log "error: $*"
  show_logs
  log "stopping what was started"
  stop_daemons || true
  if [[ -f $DIR/$MARKER ]]; then rm -rf -- "$DIR"; fi
  if [[ -f $LAST_FILE && $(<"$LAST_FILE") == "$DIR" ]]; then rm -f -- "$LAST_FILE"; fi
  exit 1
}

remaining() { local r=$((DEADLINE - SECONDS)); echo $((r > 1 ? r : 1)); }

# wait_for WHAT DAEMON CMD...: poll CMD until it succeeds; fail on timeout or
# if DAEMON (spawn name, may be empty) died.
wait_for() {
  local what=$1 daemon=$2; shift 2
  while ! "$@" >/dev/null 2>&1; do
    if [[ -n $daemon ]] && ! alive "$daemon"; then
      fail "$daemon exited while waiting for $what"
    fi
    ((SECONDS < DEADLINE)) || fail "timed out waiting for $what"
    sleep 0.5
  done
}

osd_is_up() {
  ceph_cli osd dump 2>/dev/null | grep -q '^osd\.0 up'
}

rgw_answers() {
  curl -s -o /dev/null --max-time 5 "http://127.0.0.1:$1/"
}

write_conf() {
  local fsid=$1 mon_port=$2 rgw_port=$3 mem_bytes=$4
  cat >"$DIR/ceph.conf" <<EOF
# generated by scripts/ceph-rgw.sh - see the comments there
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$mon_port]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false

run dir = $DIR/run
pid file = $DIR/run/\$name.pid
admin socket = $DIR/run/\$cluster-\$name.asok
log file = $DIR/log/\$name.log
log to stderr = false
err to stderr = true
mon cluster log file = $DIR/log/cluster.log
crash dir = $DIR/crash
keyring = $DIR/keyring

auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc
ms mon service mode = crc
ms mon cluster mode = crc
ms client mode = crc
ms service mode = crc
ms cluster mode = crc

osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon max pg per osd = 1000
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1

[mon]
mon data = $DIR/mon/\$cluster-\$id
mon allow pool delete = true

[osd]
osd data = $DIR/osd/\$cluster-\$id
osd objectstore = memstore
memstore device bytes = $mem_bytes

[client.admin]
admin socket =
log file = $DIR/log/client.admin.log

[$RGW_NAME]
pid file = $DIR/run/rgw.daemon.pid
rgw data = $DIR/rgw
rgw frontends = beast endpoint=127.0.0.1:$rgw_port tcp_nodelay=1
rgw gc obj min wait = 5
rgw gc processor period = 10
rgw dynamic resharding = false
EOF
}

# --- commands ----------------------------------------------------------------

cmd_start() {
  local timeout=${CEPH_RGW_TIMEOUT:-180}
  local mem_bytes=${CEPH_RGW_MEMSTORE_BYTES:-$((6 * 1024 * 1024 * 1024))}
  [[ $timeout =~ ^[0-9]+$ ]] || die "CEPH_RGW_TIMEOUT must be a number of seconds"
  [[ $mem_bytes =~ ^[0-9]+$ ]] || die "CEPH_RGW_MEMSTORE_BYTES must be a byte count"
  local b
  for b in ceph-mon ceph-osd radosgw radosgw-admin ceph monmaptool ceph-authtool curl; do
    command -v "$b" >/dev/null || die "$b not found (apt-get install ceph-mon ceph-osd radosgw ceph-common curl)"
  done

  if [[ -n ${1:-} ]]; then
    DIR=$1
    mkdir -p -- "$DIR"
    [[ -z $(ls -A -- "$DIR") ]] || die "$DIR is not empty"
  else
    DIR=$(mktemp -d /tmp/granary-rgw.XXXXXX)
  fi
  DIR=$(cd -- "$DIR" && pwd -P)
  : >"$DIR/$MARKER"
  echo "$DIR" >"$LAST_FILE"
  mkdir -p "$DIR"/{run,log,mon,osd,rgw,crash}
  DEADLINE=$((SECONDS + timeout))
  trap 'fail "interrupted"' INT TERM

  local mon_port=${CEPH_MON_PORT:-} rgw_port=${RGW_PORT:-}
  [[ -n $mon_port ]] || mon_port=$(free_port)
  [[ -n $rgw_port ]] || rgw_port=$(free_port)
  while [[ $rgw_port == "$mon_port" ]]; do rgw_port=$(free_port); done
  # A fixed port that is already taken would let us mistake whoever holds it
  # for our gateway, so refuse up front.
  port_free "$mon_port" || fail "mon port $mon_port is in use"
  port_free "$rgw_port" || fail "rgw port $rgw_port is in use"
  echo "$rgw_port" >"$DIR/rgw_port"
  local fsid
  fsid=$(</proc/sys/kernel/random/uuid)
  write_conf "$fsid" "$mon_port" "$rgw_port" "$mem_bytes"
  local conf=$DIR/ceph.conf
  log "dir $DIR, mon port $mon_port, rgw port $rgw_port"

  # Monitor.
  {
    ceph-authtool --create-keyring "$DIR/keyring" --gen-key -n mon. --cap mon 'allow *' &&
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$DIR/monmap" &&
    ceph-mon -c "$conf" --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/keyring"
  } >>"$DIR/log/mkfs.out" 2>&1 || fail "monitor mkfs failed"
  PHASE_LOG=mon.a.log
  spawn mon ceph-mon -c "$conf" -f -i a
  wait_for "the monitor" mon ceph_cli mon stat
  log "mon up after ${SECONDS}s"

  # OSD (id 0).
  local osd_uuid osd_id
  PHASE_LOG=osd.0.log
  osd_uuid=$(</proc/sys/kernel/random/uuid)
  osd_id=$(ceph_cli osd new "$osd_uuid" 2>>"$DIR/log/mkfs.out") || fail "ceph osd new failed"
  [[ $osd_id == 0 ]] || fail "expected osd id 0, got '$osd_id'"
  mkdir -p "$DIR/osd/ceph-0"
  ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$osd_uuid" >>"$DIR/log/mkfs.out" 2>&1 ||
    fail "osd mkfs failed"
  spawn osd ceph-osd -c "$conf" -f -i 0
  wait_for "the OSD to come up" osd osd_is_up
  log "osd up after ${SECONDS}s"

  # Gateway.  It creates its pools and the default zone itself on first start.
  PHASE_LOG=$RGW_NAME.log
  spawn rgw radosgw -c "$conf" -f -n "$RGW_NAME"
  wait_for "radosgw to answer on 127.0.0.1:$rgw_port" rgw rgw_answers "$rgw_port"
  log "rgw up after ${SECONDS}s"

  PHASE_LOG=
  timeout "$(remaining)" radosgw-admin -c "$conf" user create --uid=granary-test \
      --display-name="granary test" --access-key="$ACCESS_KEY" --secret="$SECRET_KEY" \
      >>"$DIR/log/user-create.out" 2>&1 || fail "radosgw-admin user create failed"

  cat >"$DIR/env" <<EOF
GRANARY_TEST_S3_ENDPOINT=http://127.0.0.1:$rgw_port
GRANARY_TEST_S3_ACCESS_KEY=$ACCESS_KEY
GRANARY_TEST_S3_SECRET_KEY=$SECRET_KEY
GRANARY_TEST_S3_REGION=$REGION
GRANARY_RGW_DIR=$DIR
EOF
  trap - INT TERM
  log "ready after ${SECONDS}s"
  cat "$DIR/env"
}

resolve_dir() {
  if [[ -n ${1:-} ]]; then
    DIR=$1
  elif [[ -f $LAST_FILE ]]; then
    DIR=$(<"$LAST_FILE")
  else
    DIR=
  fi
}

cmd_stop() {
  resolve_dir "${1:-}"
  if [[ -z $DIR ]]; then
    log "nothing to stop"
    return 0
  fi
  if [[ -d $DIR ]]; then
    DIR=$(cd -- "$DIR" && pwd -P)
    stop_daemons || die "could not kill daemons in $DIR"
    if [[ -f $DIR/$MARKER ]]; then
      rm -rf -- "$DIR"
    else
      log "$DIR was not created by this script; not removing it"
    fi
  fi
  if [[ -f $LAST_FILE && $(<"$LAST_FILE") == "$DIR" ]]; then rm -f -- "$LAST_FILE"; fi
  log "stopped $DIR"
}

cmd_status() {
  resolve_dir "${1:-}"
  [[ -n $DIR && -f $DIR/rgw_port ]] || { log "not running"; return 1; }
  if rgw_answers "$(<"$DIR/rgw_port")"; then
    log "running: $DIR"
  else
    log "not answering: $DIR"
    return 1
  fi
}

usage() {
  sed -n '2,/^# Environment knobs/{/^# Environment knobs/d;s/^# \{0,1\}//;p}' "$0" >&2
  exit 2
}

DIR=
DEADLINE=0
PHASE_LOG=
case ${1:-} in
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  status) shift; cmd_status "$@" ;;
  *) usage ;;
esac

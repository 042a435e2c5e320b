#!/usr/bin/env bash
# model-server reading the demo models from a local S3-compatible server, as it reads MinIO, Ceph or
# Amazon S3: moto's S3 API on 127.0.0.1:$S3_PORT (9000), the models uploaded with `aws s3 cp`, then
# `model-server --model_base_path=s3://models/two_versions` with the endpoint and keys in its
# environment (the same variables as for TF Serving). Ctrl-C stops both. `make serve-s3` runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
S3_PORT=${S3_PORT:-9000}
GRPC_PORT=${GRPC_PORT:-8500}
REST_PORT=${REST_PORT:-8501}
MODELS=${MODELS:-demo_models}
export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo-secret AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
STATE=$(mktemp -d -t serve-from-s3.XXXXXX)

"$BIN/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$STATE/moto.log" 2>&1 &
MOTO=$!
trap 'exit 130' INT TERM
trap 'kill $MOTO 2>/dev/null; wait $MOTO 2>/dev/null; rm -rf "$STATE"' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "$AWS_ENDPOINT_URL" && break; sleep 0.1; done

"$BIN/aws" s3 mb s3://models >/dev/null
"$BIN/aws" s3 cp --recursive --only-show-errors "$MODELS/two_versions" s3://models/two_versions
echo "s3://models/two_versions on $AWS_ENDPOINT_URL:"
"$BIN/aws" s3 ls --recursive s3://models/two_versions

"$BIN/model-server" --port="$GRPC_PORT" --rest_api_port="$REST_PORT" --bind_address=127.0.0.1 \
  --model_name=two_versions --model_base_path=s3://models/two_versions \
  --model_cache_dir="$STATE/cache" --file_system_poll_wait_seconds=1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; kill $MOTO 2>/dev/null; wait $MOTO 2>/dev/null; rm -rf "$STATE"' EXIT
wait $SERVER

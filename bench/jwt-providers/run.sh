#!/usr/bin/env bash
# Verifies and signs RS256 / ES256 / HS256 tokens through jsonwebtoken with
# each provider, alternating, three rounds, one core. Prints ns per operation.
set -euo pipefail
cd "$(dirname "$0")"
keys=$(mktemp -d)
trap 'rm -rf "$keys"' EXIT
openssl genrsa -out "$keys/rsa.pem" 2048 2>/dev/null
openssl rsa -in "$keys/rsa.pem" -pubout -out "$keys/rsa.pub" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$keys/ec.sec1"
openssl pkcs8 -topk8 -nocrypt -in "$keys/ec.sec1" -out "$keys/ec.pem"
openssl ec -in "$keys/ec.pem" -pubout -out "$keys/ec.pub" 2>/dev/null
cargo build --release --quiet
bin=$PWD/target/release/jwt-providers
cd "$keys"
for _ in 1 2 3; do
  taskset -c 0 "$bin" ring
  taskset -c 0 "$bin" rust_crypto
done

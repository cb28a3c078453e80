#!/bin/sh
# A local CA and a certificate for localhost, for deploy/compose.yaml:
# written to DIR (default deploy/certs). Trust ca.crt in your browser, or
# accept the warning.
set -eu
out=${1:-"$(dirname "$0")/certs"}
mkdir -p "$out"
cd "$out"
openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=slo-hub local CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
  -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout hub.key -out hub.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > ext.cnf
openssl x509 -req -in hub.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
  -extfile ext.cnf -out hub.crt 2>/dev/null
rm -f hub.csr ext.cnf ca.srl
chmod 0644 hub.crt ca.crt
chmod 0640 hub.key
echo "wrote $(pwd)/hub.crt, hub.key (and the CA: ca.crt)"

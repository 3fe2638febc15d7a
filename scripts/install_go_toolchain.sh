#!/bin/sh
# Go for the generated Go stubs (`make go-toolchain`): Debian's Go compiler, protoc-gen-go,
# protoc-gen-go-grpc and the Go protobuf/gRPC libraries under /usr/share/gocode, which
# `make go-vet` builds against in GOPATH mode (docs/decisions.md: "Go from Debian, GOPATH
# mode"). Quick when they are installed already; otherwise needs root (or sudo) and apt.
set -eu

# golang-github-golang-protobuf-1-5-dev replaces the 1.3 library that grpc-go would otherwise
# pull in: 1.3 cannot marshal the messages protoc-gen-go 1.28 generates (it panics at run time),
# 1.5 is a thin layer over google.golang.org/protobuf and can.
PACKAGES="golang-go protoc-gen-go protoc-gen-go-grpc golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev golang-google-grpc-dev golang-google-genproto-dev"

missing=""
for package in $PACKAGES; do
  dpkg -s "$package" >/dev/null 2>&1 || missing="$missing $package"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  as_root=""
elif command -v sudo >/dev/null 2>&1; then
  as_root="sudo"
else
  echo "install_go_toolchain: need root to install:$missing" >&2
  exit 1
fi
echo "install_go_toolchain: installing$missing" >&2
$as_root apt-get update -q
# shellcheck disable=SC2086 # one word per package
DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -q --no-install-recommends $missing

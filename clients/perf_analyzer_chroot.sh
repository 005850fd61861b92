#!/usr/bin/env bash
# Build a Debian 13 (trixie) chroot that runs perf_analyzer on a Debian 12 host.
#
# Why: the perf-analyzer wheels on PyPI (2.58+) are manylinux_2_38; Debian 12 has glibc 2.36,
# so pip there falls back to a 0.1.0 placeholder with no binary. trixie ships glibc 2.41.
# The chroot shares the host's network namespace, so perf_analyzer inside it reaches a
# tritonserver listening on the host's 127.0.0.1.
#
# Usage (as root):  clients/perf_analyzer_chroot.sh [DIR]      (default /opt/seminar/perf-chroot)
# Then:             chroot DIR /opt/pa/bin/perf_analyzer --help
# `seminar perf --chroot DIR` does the second step for you. Takes ~1 min and ~400 MB.
set -euo pipefail

DIR="${1:-/opt/seminar/perf-chroot}"
PA_VERSION="${PA_VERSION:-2.60.0}"   # the perf-analyzer wheel reports/perf.md was measured with
MIRROR="${MIRROR:-}"                 # empty = debootstrap's default Debian mirror

if [[ $EUID -ne 0 ]]; then
  echo "perf_analyzer_chroot.sh: must run as root (debootstrap and chroot need it)" >&2
  exit 1
fi
if ! command -v debootstrap >/dev/null; then
  echo "perf_analyzer_chroot.sh: debootstrap is missing: apt-get install -y debootstrap" >&2
  exit 1
fi

if [[ ! -x "$DIR/usr/bin/apt-get" ]]; then
  mkdir -p "$DIR"
  debootstrap --variant=minbase trixie "$DIR" ${MIRROR:+"$MIRROR"}
fi
cp /etc/resolv.conf "$DIR/etc/resolv.conf"

chroot "$DIR" /usr/bin/env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends python3 python3-venv ca-certificates >/dev/null
# Trust the host's local CAs too (pip behind a TLS-inspecting proxy needs them).
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  mkdir -p "$DIR/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$DIR/usr/local/share/ca-certificates/"
  chroot "$DIR" /usr/sbin/update-ca-certificates >/dev/null
fi
chroot "$DIR" /usr/bin/python3 -m venv /opt/pa
spec="perf-analyzer${PA_VERSION:+==$PA_VERSION}"
chroot "$DIR" /usr/bin/env PIP_CERT=/etc/ssl/certs/ca-certificates.crt /opt/pa/bin/pip install --quiet --disable-pip-version-check "$spec"
chroot "$DIR" /opt/pa/bin/perf_analyzer --version 2>/dev/null \
  || chroot "$DIR" /opt/pa/bin/perf_analyzer --help | head -n 3
echo "perf_analyzer ready: chroot $DIR /opt/pa/bin/perf_analyzer"

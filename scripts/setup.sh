#!/usr/bin/env bash
# One-time (idempotent) set-up of a Debian 12 machine for vnfchain, as root:
# Debian packages, kernel headers for BCC, bpffs, and a venv in .venv that sees
# Debian's BCC (python3-bpfcc) through --system-site-packages.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "setup.sh: run as root (BPF, XDP and network namespaces need it)" >&2
  exit 1
fi

# --- Debian packages -------------------------------------------------------
pkgs=(python3-bpfcc python3-venv python3-pip iproute2 iputils-ping curl
      netcat-openbsd ethtool procps kmod graphviz libbpf1 nftables openssl)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done

# --- kernel headers for BCC ------------------------------------------------
kver=$(uname -r)
need_headers=0
have_headers() {
  [ -e "/lib/modules/$kver/build/include/linux/kconfig.h" ] || [ -e "/lib/modules/$kver/source/include/linux/kconfig.h" ]
}
if ! have_headers && [ ! -e /sys/kernel/kheaders.tar.xz ]; then
  need_headers=1
  if apt-cache policy "linux-headers-$kver" 2>/dev/null | grep -q Candidate: ; then
    missing+=("linux-headers-$kver")
  else
    missing+=(linux-headers-amd64)
  fi
fi

if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # a distro kernel's own headers may not exist in the archive: fall back to the generic ones
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/vnfchain-apt.log 2>&1; then
    if [ "$need_headers" = 1 ]; then
      filtered=(); for p in "${missing[@]}"; do [[ $p == linux-headers-* ]] || filtered+=("$p"); done
      apt-get install -y -qq --no-install-recommends "${filtered[@]}" linux-headers-amd64 >/tmp/vnfchain-apt.log 2>&1 \
        || { cat /tmp/vnfchain-apt.log >&2; exit 1; }
    else
      cat /tmp/vnfchain-apt.log >&2; exit 1
    fi
  fi
fi

if [ "$need_headers" = 1 ] && ! have_headers; then
  # This kernel has no headers package: point BCC at Debian's generic ones.
  # Never overwrite headers that exist.
  arch_dir=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
  common_dir=${arch_dir%-amd64}-common
  if [ -z "$arch_dir" ] || [ ! -d "$common_dir" ]; then
    echo "setup.sh: no kernel headers found under /usr/src; install linux-headers-amd64" >&2
    exit 1
  fi
  say "kernel $kver has no headers: using $arch_dir"
  mkdir -p "/lib/modules/$kver"
  [ -e "/lib/modules/$kver/build" ] || ln -sfn "$arch_dir" "/lib/modules/$kver/build"
  [ -e "/lib/modules/$kver/source" ] || ln -sfn "$common_dir" "/lib/modules/$kver/source"
fi

# --- bpffs -----------------------------------------------------------------
if ! mountpoint -q /sys/fs/bpf; then
  say "mounting bpffs on /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi
install -d -m 0700 /run/vnfchain   # root's alone: the records hold the rules

# --- venv ------------------------------------------------------------------
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
  say "creating .venv from /usr/bin/python3 (sees Debian's BCC)"
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.vnfchain-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "installing vnfchain and its PyPI dependencies into .venv"
  .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/pip install -q -e '.[test]'
  echo "$want" > "$stamp"
fi
say "ready: $(.venv/bin/vnfchain --version 2>/dev/null || echo vnfchain)"

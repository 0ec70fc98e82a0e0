#!/usr/bin/env bash
# Unpacks Debian's other POP3 servers into a private tree for the interoperability matrix
# (tests/test_interop.py), WITHOUT installing them as packages: they all provide and
# conflict on `pop3-server`, so `apt-get install popa3d` would remove dovecot-pop3d.
#
# For each server: `apt-get download` + `dpkg-deb -x` into $POP3MAIL_SERVERS_ROOT/<package>,
# then only its library dependencies through apt. What their postinst scripts would do
# (system users, spool folders, PAM files) the test fixtures do inside a temp dir and a
# private mount namespace, so nothing here touches /etc.
# Idempotent; root only (skips with a message otherwise).
set -euo pipefail

root="${POP3MAIL_SERVERS_ROOT:-/var/cache/pop3mail-servers}"
servers=(mailutils-pop3d popa3d solid-pop3d cyrus-pop3d cyrus-common
         courier-pop courier-base courier-authlib)
# Libraries only: none of these provides pop3-server (checked below before installing).
libraries=(mailutils-common libmailutils9 libmu-dbm9 libgsasl18 libkyotocabinet16v5
           libwrap0 libnsl2 libpam0g libpam-modules liblockfile1 util-linux
           libclamav12 libical3 libxapian30 libzephyr4 libpcre3 libjansson4 libicu72
           libsasl2-2 libsasl2-modules libsasl2-modules-db sasl2-bin libcourier-unicode4)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

unpacked_all=1
for s in "${servers[@]}"; do [ -f "$root/$s/.unpacked" ] || unpacked_all=0; done
missing=()
for p in "${libraries[@]}"; do installed "$p" || missing+=("$p"); done
[ $unpacked_all = 1 ] && [ ${#missing[@]} -eq 0 ] && [ -d /var/lib/popa3d ] && [ -d /etc/courier ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "Not root: cannot unpack ${servers[*]}; the interoperability tests will be skipped." >&2
  exit 0
fi

cleanup=()
trap 'rm -rf "${cleanup[@]}"' EXIT

# apt-cache/apt-get download need package lists.
if ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then apt-get update -q >/dev/null; fi

if [ ${#missing[@]} -gt 0 ]; then
  plan=$(DEBIAN_FRONTEND=noninteractive apt-get install -s --no-install-recommends "${missing[@]}" \
         | awk '/^Inst /{print $2}')
  for p in $plan; do
    if apt-cache show "$p" 2>/dev/null | grep -qE '^Provides:.*\bpop3-server\b'; then
      echo "Refusing: installing ${missing[*]} would bring $p, a pop3-server." >&2
      exit 1
    fi
  done
  echo "Installing libraries for the POP3 servers: ${missing[*]} ..."
  # sasl2-bin ships saslauthd: no service may start (as in debian-packages.sh).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    cleanup+=(/usr/sbin/policy-rc.d)
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
    >/dev/null
fi

mkdir -p "$root"
downloads=$(mktemp -d)
cleanup+=("$downloads")
for s in "${servers[@]}"; do
  [ -f "$root/$s/.unpacked" ] && continue
  echo "Unpacking $s into $root/$s ..."
  (cd "$downloads" && apt-get download -q "$s" >/dev/null 2>&1) || {
    apt-get update -q >/dev/null
    (cd "$downloads" && apt-get download -q "$s" >/dev/null)
  }
  rm -rf "${root:?}/$s"
  mkdir -p "$root/$s"
  dpkg-deb -x "$downloads/${s}"_*.deb "$root/$s"
  dpkg-deb -f "$downloads/${s}"_*.deb Version > "$root/$s/.version"
  touch "$root/$s/.unpacked"
done

# What the postinst scripts do and a fixture cannot cover by itself: empty folders that the
# fixtures bind-mount their own over, in a private mount namespace (compiled-in paths):
# popa3d's chroot, courier-authlib's config, socket and module folders.
mkdir -p /var/lib/popa3d /etc/courier /run/courier /usr/lib/courier-authlib

# The Dovecot tests run in the same CI run: nothing above may have removed it.
if installed dovecot-core && ! installed dovecot-pop3d; then
  echo "dovecot-pop3d is no longer installed: something pulled a pop3-server." >&2
  exit 1
fi

#!/bin/sh
# libvirtd and virtlogd in the foreground of a container (the `hypervisor` image). Its socket,
# /run/libvirt/libvirt-sock, is in a volume the host's worker container mounts too.
set -eu
mkdir -p /var/log/libvirt /run/libvirt
virtlogd -d
exec libvirtd

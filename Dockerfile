# syntax=docker/dockerfile:1
# vmworker images, all Debian 12 (bookworm). Targets:
#   worker      the `vmworker` command (worker, CLI tools, monitor), in /opt/vmworker
#   hypervisor  libvirtd + QEMU, for the docker-compose try-out stack (the worker reaches it
#               through libvirt's socket in a shared /run/libvirt volume)
# docker build --target worker -t vmworker .

FROM debian:12-slim AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
# libvirt-python has no wheels: it is built against libvirt-dev here
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 python3-venv python3-dev gcc pkg-config libvirt-dev libxml2-dev libxslt1-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/vmworker
COPY pyproject.toml README.md /src/
COPY worker /src/worker
COPY handlers /src/handlers
RUN /opt/vmworker/bin/pip install --no-cache-dir /src

FROM debian:12-slim AS worker
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PATH=/opt/vmworker/bin:$PATH
# python3-libvirt, python3-lxml: hook scripts run on the host's python3 (VDSM's hooks import both)
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libvirt0 libxml2 libxslt1.1 ca-certificates \
      python3-libvirt python3-lxml \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/vmworker /opt/vmworker
# the shipped hooks, owned by root and not writable by anyone else (the hook engine checks)
COPY --chmod=0755 hookdirs /etc/vmworker/hooks
RUN mkdir -p /var/lib/vmworker && chmod 0700 /var/lib/vmworker \
 && vmworker --version
ENV VMWORKER_HOOKS_ROOT=/etc/vmworker/hooks VMWORKER_STATE_DIR=/var/lib/vmworker
CMD ["vmworker", "--help"]

FROM debian:12-slim AS hypervisor
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils \
 && rm -rf /var/lib/apt/lists/*
# QEMU as root without cgroups or a security driver: a container has no systemd to set them up
RUN (getent group kvm || groupadd kvm) && groupadd -f libvirt-qemu \
 && (id libvirt-qemu || useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt \
        -s /usr/sbin/nologin libvirt-qemu) \
 && printf '%s\n' 'user = "root"' 'group = "root"' 'security_driver = "none"' \
      'cgroup_controllers = [ ]' 'remember_owner = 0' >> /etc/libvirt/qemu.conf
COPY --chmod=0755 deploy/hypervisor-entrypoint.sh /usr/local/bin/hypervisor-entrypoint
VOLUME ["/run/libvirt", "/var/lib/libvirt"]
CMD ["/usr/local/bin/hypervisor-entrypoint"]

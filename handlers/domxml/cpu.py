"""Processors: `<vcpu>`, `<cputune>` and `<cpu>` (mode, model, flags, topology, NUMA)."""

from __future__ import annotations

from lxml import etree

from handlers.domxml._xml import element, sub
from handlers.spec import NumaCellSpec, VmSpec


def vcpu(spec: VmSpec) -> etree._Element:
    """`<vcpu current=N>max</vcpu>`: `current` only when hotplug room is asked for."""
    current = spec.vcpus if spec.max_vcpus is not None and spec.max_vcpus > spec.vcpus else None
    return element("vcpu", str(spec.max_vcpu_count), placement="static", current=current)


def cputune(spec: VmSpec) -> etree._Element | None:
    if spec.cpu_shares is None:
        return None
    tune = element("cputune")
    sub(tune, "shares", str(spec.cpu_shares))
    return tune


def numa_cells(spec: VmSpec) -> list[NumaCellSpec]:
    """The spec's cells, or one holding everything when memory hotplug needs NUMA."""
    if spec.cpu is not None and spec.cpu.numa:
        return list(spec.cpu.numa)
    if spec.max_memory_mib is not None:
        last = spec.max_vcpu_count - 1
        return [NumaCellSpec(cpus=f"0-{last}" if last else "0", memory_mib=spec.memory_mib)]
    return []


def cpu(spec: VmSpec) -> etree._Element | None:
    """`<cpu>`, or None when neither a CPU model nor NUMA is asked for."""
    cells = numa_cells(spec)
    if spec.cpu is None and not cells:
        return None
    el = element("cpu")
    c = spec.cpu
    if c is not None:
        el.set("mode", c.mode)
        if c.mode == "custom":
            el.set("match", "exact")
            sub(el, "model", c.model, fallback=c.fallback)
        elif c.fallback is not None:
            sub(el, "model", fallback=c.fallback)
        if c.topology is not None:
            t = c.topology
            sub(el, "topology", sockets=t.sockets, dies=1, cores=t.cores, threads=t.threads)
        for f in c.features:
            sub(el, "feature", policy=f.policy, name=f.name)
    if cells:
        numa = sub(el, "numa")
        for i, cell in enumerate(cells):
            sub(numa, "cell", id=i, cpus=cell.cpus, memory=cell.memory_mib, unit="MiB")
    return el

"""Storage roots, image format detection and disk target naming."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from handlers.domxml import build_disk_xml, build_domain_xml
from handlers.errors import OpError
from handlers.spec import DiskSpec, VmSpec
from handlers.storage import (
    QCOW2_MAGIC,
    assign_targets,
    check_path_under_roots,
    detect_format,
    next_disk_target,
    target_name,
)

UUID = "6f1c1a0e-3c1b-4c55-9d0e-2a7b5f2c9e01"


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    """An images root with one qcow2 and one raw file, and a directory outside it."""
    images = tmp_path / "images"
    outside = tmp_path / "outside"
    images.mkdir()
    outside.mkdir()
    (images / "root.qcow2").write_bytes(QCOW2_MAGIC + b"\x00\x00\x00\x03" + b"\x00" * 64)
    (images / "data.raw").write_bytes(b"\x00" * 512)
    (outside / "secret.img").write_bytes(b"\x00" * 512)
    return images, outside


def _spec(**fields: Any) -> VmSpec:
    return VmSpec.model_validate({"uuid": UUID, "name": "s1", **fields})


# --- check_path_under_roots


def test_dotdot_is_refused_even_when_it_stays_inside(roots: tuple[Path, Path]) -> None:
    images, _ = roots
    with pytest.raises(OpError) as exc:
        check_path_under_roots(f"{images}/sub/../root.qcow2", [images], field="disks[0].path")
    assert exc.value.source == "validation"
    assert "disks[0].path" in exc.value.message and "'..'" in exc.value.message


def test_dotdot_escape_is_refused(roots: tuple[Path, Path]) -> None:
    images, _ = roots
    with pytest.raises(OpError, match=r"disks\[0\].path: .* contains '\.\.'"):
        check_path_under_roots(f"{images}/../outside/secret.img", [images], field="disks[0].path")


def test_path_in_a_root_is_accepted(roots: tuple[Path, Path]) -> None:
    images, outside = roots
    got = check_path_under_roots(images / "root.qcow2", [outside, images])
    assert got == (images / "root.qcow2").resolve()


def test_path_outside_every_root_is_refused(roots: tuple[Path, Path]) -> None:
    images, outside = roots
    with pytest.raises(OpError) as exc:
        check_path_under_roots(outside / "secret.img", [images], field="cdroms[0].path")
    assert exc.value.code == "path_outside_storage_roots"
    assert exc.value.details["field"] == "cdroms[0].path"
    assert "cdroms[0].path" in str(exc.value)


def test_symlink_pointing_out_of_the_root_is_refused(roots: tuple[Path, Path]) -> None:
    images, outside = roots
    (images / "innocent.img").symlink_to(outside / "secret.img")
    with pytest.raises(OpError, match="outside the storage roots"):
        check_path_under_roots(images / "innocent.img", [images])


def test_symlinked_directory_pointing_out_is_refused(roots: tuple[Path, Path]) -> None:
    images, outside = roots
    (images / "door").symlink_to(outside, target_is_directory=True)
    with pytest.raises(OpError, match="outside the storage roots"):
        check_path_under_roots(images / "door" / "secret.img", [images])


def test_symlink_inside_the_root_resolves_to_its_target(roots: tuple[Path, Path]) -> None:
    images, _ = roots
    (images / "current.qcow2").symlink_to(images / "root.qcow2")
    assert check_path_under_roots(images / "current.qcow2", [images]) == images / "root.qcow2"


def test_root_given_through_a_symlink_still_matches(
    roots: tuple[Path, Path], tmp_path: Path
) -> None:
    images, _ = roots
    (tmp_path / "link-to-images").symlink_to(images, target_is_directory=True)
    got = check_path_under_roots(images / "data.raw", [tmp_path / "link-to-images"])
    assert got == images / "data.raw"


def test_prefix_of_a_root_name_is_not_inside_it(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images-evil").mkdir()
    with pytest.raises(OpError):
        check_path_under_roots(tmp_path / "images-evil" / "x.img", [tmp_path / "images"])


def test_relative_path_is_refused(roots: tuple[Path, Path]) -> None:
    images, _ = roots
    with pytest.raises(OpError, match="not an absolute path"):
        check_path_under_roots("root.qcow2", [images])


def test_no_roots_refuses_everything(roots: tuple[Path, Path]) -> None:
    images, _ = roots
    with pytest.raises(OpError, match="none configured"):
        check_path_under_roots(images / "root.qcow2", [])


# --- build-time checks in build_domain_xml


def test_build_refuses_disk_outside_roots_naming_the_disk(roots: tuple[Path, Path]) -> None:
    images, outside = roots
    spec = _spec(
        disks=[{"path": str(images / "root.qcow2")}, {"path": str(outside / "secret.img")}]
    )
    with pytest.raises(OpError) as exc:
        build_domain_xml(spec, domain_type="kvm", storage_roots=[images])
    assert exc.value.source == "validation"
    assert exc.value.details["field"] == "disks[1].path"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cdroms": [{"path": "/etc/shadow"}]}, "cdroms[0].path"),
        ({"os": {"firmware": "uefi", "loader": "/etc/passwd"}}, "os.loader"),
        ({"os": {"firmware": "uefi", "nvram": "/etc/x_VARS.fd"}}, "os.nvram"),
        ({"os": {"firmware": "uefi", "nvram_template": "/etc/t.fd"}}, "os.nvram_template"),
    ],
)
def test_build_refuses_every_file_path_outside_roots(
    roots: tuple[Path, Path], fields: dict[str, Any], field: str
) -> None:
    images, _ = roots
    with pytest.raises(OpError) as exc:
        build_domain_xml(_spec(**fields), domain_type="kvm", storage_roots=[images])
    assert exc.value.details["field"] == field


def test_build_refuses_symlink_escape(roots: tuple[Path, Path]) -> None:
    images, outside = roots
    (images / "looks-fine.img").symlink_to(outside / "secret.img")
    spec = _spec(disks=[{"path": str(images / "looks-fine.img")}])
    with pytest.raises(OpError, match=r"disks\[0\].path"):
        build_domain_xml(spec, domain_type="kvm", storage_roots=[images])


def test_build_writes_the_resolved_path(roots: tuple[Path, Path]) -> None:
    images, _ = roots
    (images / "current.qcow2").symlink_to(images / "root.qcow2")
    spec = _spec(disks=[{"path": str(images / "current.qcow2")}])
    root = etree.fromstring(build_domain_xml(spec, domain_type="kvm", storage_roots=[images]))
    assert root.find("devices/disk/source").get("file") == str(images / "root.qcow2")


def test_block_devices_and_network_disks_are_not_storage_root_checked(
    roots: tuple[Path, Path],
) -> None:
    images, _ = roots
    spec = _spec(
        disks=[
            {"type": "block", "path": "/dev/vg0/lv"},
            {"type": "rbd", "rbd": {"pool": "p", "image": "i"}},
        ]
    )
    build_domain_xml(spec, domain_type="kvm", storage_roots=[images])


def test_no_roots_means_no_check() -> None:
    build_domain_xml(_spec(disks=[{"path": "/anywhere/at/all.img"}]), domain_type="kvm")


# --- format detection


def test_format_is_detected_from_the_qcow2_magic(roots: tuple[Path, Path]) -> None:
    images, _ = roots
    assert detect_format(images / "root.qcow2") == "qcow2"
    assert detect_format(images / "data.raw") == "raw"
    assert detect_format(images / "missing.img") == "raw"


def test_detected_format_goes_into_the_driver(roots: tuple[Path, Path]) -> None:
    images, _ = roots
    spec = _spec(disks=[{"path": str(images / "root.qcow2")}, {"path": str(images / "data.raw")}])
    root = etree.fromstring(build_domain_xml(spec, domain_type="kvm"))
    assert [d.get("type") for d in root.iterfind("devices/disk/driver")] == ["qcow2", "raw"]


def test_given_format_wins_over_detection(roots: tuple[Path, Path]) -> None:
    images, _ = roots
    spec = _spec(disks=[{"path": str(images / "root.qcow2"), "format": "raw"}])
    root = etree.fromstring(build_domain_xml(spec, domain_type="kvm"))
    assert root.find("devices/disk/driver").get("type") == "raw"


def test_shareable_disk_detected_as_qcow2_is_refused(roots: tuple[Path, Path]) -> None:
    images, _ = roots
    spec = _spec(disks=[{"path": str(images / "root.qcow2"), "shareable": True}])
    with pytest.raises(OpError) as exc:
        build_domain_xml(spec, domain_type="kvm")
    assert exc.value.details["field"] == "disks[0].format"


# --- target names


def test_target_names_go_past_z_without_limit() -> None:
    assert [target_name("vd", i) for i in (0, 1, 25, 26, 27, 51, 52, 701, 702)] == [
        "vda",
        "vdb",
        "vdz",
        "vdaa",
        "vdab",
        "vdaz",
        "vdba",
        "vdzz",
        "vdaaa",
    ]


def test_next_target_skips_used_names() -> None:
    assert next_disk_target("virtio", set()) == "vda"
    assert next_disk_target("virtio", {"vda", "vdc"}) == "vdb"
    assert next_disk_target("virtio", {f"vd{chr(c)}" for c in range(97, 123)}) == "vdaa"


def test_sata_and_scsi_share_the_sd_names() -> None:
    assert next_disk_target("sata", {"sda"}) == "sdb"
    assert next_disk_target("virtio-scsi", {"sda", "sdb"}) == "sdc"
    assert next_disk_target("scsi", set()) == "sda"


def test_ide_has_four_names_only() -> None:
    assert next_disk_target("ide", {"hda", "hdb", "hdc"}) == "hdd"
    with pytest.raises(OpError, match="no free IDE target"):
        next_disk_target("ide", {"hda", "hdb", "hdc", "hdd"})


def test_unknown_bus_is_a_validation_error() -> None:
    with pytest.raises(OpError, match="bus: unknown bus 'floppy'"):
        next_disk_target("floppy", set())


def test_wanted_targets_are_reserved_before_assigning() -> None:
    drives = [("virtio", None), ("virtio", "vda"), ("sata", None), ("virtio-scsi", "sda")]
    assert assign_targets(drives) == ["vdb", "vda", "sdb", "sda"]


def test_thirty_disks_get_distinct_targets() -> None:
    spec = _spec(disks=[{"path": f"/img/{i}.raw", "format": "raw"} for i in range(30)])
    root = etree.fromstring(build_domain_xml(spec, domain_type="kvm"))
    targets = [t.get("dev") for t in root.iterfind("devices/disk/target")]
    assert len(set(targets)) == 30
    assert targets[25:28] == ["vdz", "vdaa", "vdab"]


# --- hotplug


def test_disk_hotplug_xml_checks_target_and_roots(roots: tuple[Path, Path]) -> None:
    images, outside = roots
    disk = DiskSpec(path=str(images / "data.raw"))
    xml = build_disk_xml(disk, "vdc", storage_roots=[images])
    el = etree.fromstring(xml)
    assert el.find("target").get("dev") == "vdc"
    assert el.find("driver").get("type") == "raw"
    with pytest.raises(OpError, match="target_dev: 'sdc' does not fit bus virtio"):
        build_disk_xml(disk, "sdc")
    with pytest.raises(OpError, match=r"disk\.path"):
        build_disk_xml(DiskSpec(path=str(outside / "secret.img")), "vdc", storage_roots=[images])

"""``robustseg bundles import``: Model Zoo zips in both layouts, the round trip with export, and every refusal.

A refusal is one line, writes nothing under the bundles folder (no partial bundle, no temporary folder) and leaves
the zip byte for byte as it was.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import warnings
import zipfile
from pathlib import Path

import pytest

from common import bundle_import
from common.__main__ import main
from common.bundle_import import import_bundle
from common.bundles import export_bundle
from common.errors import RobustsegError

WEIGHTS = b"not really torch weights \x00\x01" * 64
BUNDLE_FILES = {
    "configs/metadata.json": json.dumps({"name": "Fake BraTS seg", "version": "0.1.0"}),
    "configs/inference.json": json.dumps({"network_def": {"_target_": "torch.nn.Identity"}}),
    "docs/README.md": "# fake bundle\n",
    "LICENSE": "MIT\n",
    "models/model.pt": WEIGHTS,
}


def _fake_bundle(folder: Path, files: dict[str, str | bytes] = BUNDLE_FILES) -> Path:
    for rel, content in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return folder


def _zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, str | bytes]], stored: bool = False) -> Path:
    compression = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": the duplicate is the point of one test
        with zipfile.ZipFile(path, "w", compression=compression) as zf:
            for name, content in entries:
                zf.writestr(name, content)
    return path


def _bundle_entries(prefix: str = "b/", files: dict[str, str | bytes] = BUNDLE_FILES) -> list:
    return [(f"{prefix}{rel}", content) for rel, content in files.items()]


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def test_round_trip_with_export(tmp_path):
    source = _fake_bundle(tmp_path / "src" / "fake_bundle")
    archive = export_bundle("fake_bundle", tmp_path / "fake.zip", root=source.parent)
    with zipfile.ZipFile(archive) as zf:
        zipped = {n.removeprefix("fake_bundle/"): zf.read(n) for n in zf.namelist() if not n.endswith("/")}
    out = import_bundle(archive, root=tmp_path / "bundles")
    assert out == tmp_path / "bundles" / "fake_bundle"
    tree = _tree(out)
    assert tree == zipped
    assert {rel: tree[rel] for rel in BUNDLE_FILES} == _tree(source)
    assert "common/bundle_import.py" in tree, "the exported copy of common/ comes along"
    assert sorted(p.name for p in (tmp_path / "bundles").iterdir()) == ["fake_bundle"]


@pytest.mark.parametrize(
    "metadata_name, name, expected",
    [
        ("BraTS MRI segmentation", None, "BraTS_MRI_segmentation"),
        (None, None, "zoo_bundle_v1"),  # no name in the metadata: the zip's stem
        ("../../etc", None, "etc"),
        ("BraTS MRI segmentation", "mine", "mine"),
    ],
)
def test_zoo_zip_with_configs_at_the_top(tmp_path, metadata_name, name, expected):
    metadata = {"version": "0.5.3"} | ({"name": metadata_name} if metadata_name else {})
    files = {"configs/metadata.json": json.dumps(metadata), "configs/inference.yaml": "network_def: {}\n",
             "models/model.pt": WEIGHTS}  # fmt: skip
    archive = _zip(tmp_path / "zoo_bundle_v1.zip", [("configs/", b""), *_bundle_entries("", files)])
    out = import_bundle(archive, root=tmp_path / "bundles", name=name)
    assert out == tmp_path / "bundles" / expected
    assert _tree(out) == {rel: c.encode() if isinstance(c, str) else c for rel, c in files.items()}


def test_macos_resource_forks_are_skipped(tmp_path):
    archive = _zip(tmp_path / "b.zip", [*_bundle_entries(), ("__MACOSX/b/._LICENSE", b"\x00\x05")])
    out = import_bundle(archive, root=tmp_path / "bundles")
    assert sorted(_tree(out)) == sorted(BUNDLE_FILES)
    assert sorted(p.name for p in (tmp_path / "bundles").iterdir()) == ["b"]


def _valid(tmp_path: Path) -> Path:
    return _zip(tmp_path / "b.zip", _bundle_entries())


REFUSALS = {
    "dotdot": ([("../evil", b"x")], r"'\.\.' component"),
    "dotdot_inside": ([("b/../../evil", b"x")], r"'\.\.' component"),
    "dotdot_nested": ([("a/../../evil", b"x")], r"'\.\.' component"),
    "absolute": ([("/abs/path", b"x")], "absolute path"),
    "drive_letter": ([("C:/evil", b"x")], "absolute path"),
    "drive_relative": ([("C:evil", b"x")], "absolute path"),
    "backslash": ([("b\\..\\..\\evil", b"x")], "backslash"),
    "symlink": ([(_symlink("b/models/link.pt"), "/etc/passwd")], "symbolic link"),
    "duplicate": ([("b/LICENSE", "other\n")], "more than once"),
    "duplicate_normalised": ([("b//LICENSE", "other\n")], "more than once"),
    "file_and_folder": ([("b/docs/README.md/x", b"x")], "is a file and a folder"),
    "encrypted": (None, "encrypted"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_unsafe_members_are_refused(tmp_path, case):
    extra, message = REFUSALS[case]
    if case == "encrypted":
        archive = _valid(tmp_path)
        data = bytearray(archive.read_bytes())
        # set the "encrypted" flag bit of every local and central header (offsets 6 and 8 in the zip spec)
        for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            start = 0
            while (start := data.find(signature, start)) != -1:
                data[start + offset] |= 0x1
                start += 4
        archive.write_bytes(bytes(data))
    else:
        archive = _zip(tmp_path / "b.zip", [*_bundle_entries(), *extra])
    _assert_refused(tmp_path, archive, message)


def _assert_refused(tmp_path: Path, archive: Path, message: str, root: Path | None = None, **kwargs) -> None:
    """The import raises one line matching ``message``, leaves ``root`` as it was and the zip unchanged."""
    root = root or tmp_path / "bundles"
    before_root = _tree(root) if root.exists() else None
    before_zip = _sha(archive) if archive.is_file() else None
    with pytest.raises(RobustsegError, match=message) as info:
        import_bundle(archive, root=root, **kwargs)
    assert "\n" not in str(info.value)
    assert (_tree(root) if root.exists() else None) == before_root
    if root.exists():
        assert not [p for p in root.iterdir() if p.name.startswith(".")], "no temporary folder left"
    if before_zip is not None:
        assert _sha(archive) == before_zip
    assert not (tmp_path / "evil").exists() and not (root.parent / "evil").exists()


@pytest.mark.parametrize(
    "limit, value, message",
    [
        ("MAX_MEMBERS", 3, "MAX_MEMBERS"),
        ("MAX_TOTAL_BYTES", 1000, "MAX_TOTAL_BYTES"),
        ("RATIO_CHECK_MIN_BYTES", 100, "MAX_COMPRESSION_RATIO"),  # model.pt is one repeated 26-byte line
    ],
)
def test_zip_bombs_are_refused(tmp_path, monkeypatch, limit, value, message):
    monkeypatch.setattr(bundle_import, limit, value)
    monkeypatch.setattr(bundle_import, "MAX_COMPRESSION_RATIO", 20)
    _assert_refused(tmp_path, _valid(tmp_path), message)


def test_lying_size_header_is_refused(tmp_path, monkeypatch):
    """A member that holds more than its header says is refused (zipfile's CRC check, or our byte count)."""
    archive = _valid(tmp_path)
    real = bundle_import._check_members

    def lying(archive_: Path, infos: list) -> dict:
        members = real(archive_, infos)
        members["b/models/model.pt"][0].file_size = 10
        return members

    monkeypatch.setattr(bundle_import, "_check_members", lying)
    _assert_refused(tmp_path, archive, "corrupt|expands beyond its declared 10 bytes")


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "not found"),
        ("folder", "is a folder"),
        ("not_a_zip", "not a zip file"),
        ("truncated", "not a zip file"),
        ("bad_crc", "corrupt"),
        ("no_metadata", r"no b/configs/metadata\.json"),
        ("empty", r"no configs/metadata\.json"),
        ("metadata_not_json", "not valid JSON"),
        ("metadata_not_object", "holds a list; expected a JSON object"),
        ("no_inference", "inference config"),
        ("several_tops", "2 top-level entries"),
        ("nested_too_deep", r"no outer/configs/metadata\.json"),
    ],
)
def test_broken_archives_are_refused(tmp_path, case, message):
    files = dict(BUNDLE_FILES)
    archive = tmp_path / "b.zip"
    if case == "folder":
        archive.mkdir()
    elif case == "not_a_zip":
        archive.write_text("PK but not really a zip\n")
    elif case == "truncated":
        archive.write_bytes(_valid(tmp_path).read_bytes()[:300])
    elif case == "bad_crc":  # fails mid-extraction: the files written so far must go too
        data = _zip(archive, _bundle_entries(), stored=True).read_bytes()
        at = data.index(WEIGHTS)
        archive.write_bytes(data[:at] + b"X" + data[at + 1 :])
    elif case == "empty":
        _zip(archive, [])
    elif case == "several_tops":
        _zip(archive, [*_bundle_entries(), *_bundle_entries("c/")])
    elif case == "nested_too_deep":
        _zip(archive, _bundle_entries("outer/b/"))
    elif case != "missing":
        if case == "no_metadata":
            del files["configs/metadata.json"]
        elif case == "metadata_not_json":
            files["configs/metadata.json"] = "{'name': 'b'}"
        elif case == "metadata_not_object":
            files["configs/metadata.json"] = "[1, 2]"
        elif case == "no_inference":
            del files["configs/inference.json"]
        _zip(archive, _bundle_entries("b/", files))
    _assert_refused(tmp_path, archive, message)


@pytest.mark.parametrize("name", ["a/b", "a\\b", "..", ".", "", "nul\x00"])
def test_invalid_bundle_names_are_refused(tmp_path, name):
    _assert_refused(tmp_path, _valid(tmp_path), "not a plain folder name", name=name)


def test_existing_bundle_is_not_overwritten(tmp_path):
    root = tmp_path / "bundles"
    _fake_bundle(root / "b", {"configs/metadata.json": "{}", "models/model.pt": b"old weights"})
    _assert_refused(tmp_path, _valid(tmp_path), r"exists; pass --force to replace it or --name")


def test_force_replaces_atomically(tmp_path):
    root = tmp_path / "bundles"
    _fake_bundle(root / "b", {"configs/metadata.json": "{}", "models/old_only.pt": b"old weights"})
    archive = _valid(tmp_path)
    before = _sha(archive)
    assert import_bundle(archive, root=root, force=True) == root / "b"
    assert _tree(root / "b") == {rel: c.encode() if isinstance(c, str) else c for rel, c in BUNDLE_FILES.items()}
    assert sorted(p.name for p in root.iterdir()) == ["b"], "no temporary or set-aside folder left"
    assert _sha(archive) == before


def test_failed_forced_import_keeps_the_old_bundle(tmp_path):
    root = tmp_path / "bundles"
    _fake_bundle(root / "b", {"configs/metadata.json": "{}", "models/model.pt": b"old weights"})
    data = _zip(tmp_path / "b.zip", _bundle_entries(), stored=True).read_bytes()
    at = data.index(WEIGHTS)
    archive = tmp_path / "b.zip"
    archive.write_bytes(data[:at] + b"X" + data[at + 1 :])
    _assert_refused(tmp_path, archive, "corrupt", force=True)


def test_forced_import_of_a_zip_inside_the_bundle_it_replaces(tmp_path):
    root = tmp_path / "bundles"
    _fake_bundle(root / "b")
    archive = _zip(root / "b" / "b.zip", _bundle_entries())
    _assert_refused(tmp_path, archive, "which it would replace", force=True)


def test_cli_imports_and_refuses_in_one_line(tmp_path, capsys):
    root = tmp_path / "bundles"
    main(["bundles", "import", str(_valid(tmp_path)), "--root", str(root), "--name", "2024"])
    assert capsys.readouterr().out.strip() == f"imported {root / '2024'}"
    bad = _zip(tmp_path / "bad.zip", [*_bundle_entries(), ("../evil", b"x")])
    before = _sha(bad)
    with pytest.raises(SystemExit) as exit_info:
        main(["bundles", "import", str(bad), "--root", str(root)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "'..' component" in err
    assert sorted(p.name for p in root.iterdir()) == ["2024"] and _sha(bad) == before


@pytest.mark.parametrize(
    "argv, shown",
    [(["bundles", "--help"], "import\n       Import a Model Zoo"), (["bundles", "import", "--help"], "import ARCHIVE")],
)
def test_cli_help_names_the_command(capsys, argv, shown):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    captured = capsys.readouterr()
    assert shown in captured.out + captured.err  # fire shows help on stderr when not on a terminal


def test_full_disk_mid_extraction_leaves_nothing(tmp_path, monkeypatch, capsys):
    archive, root = _valid(tmp_path), tmp_path / "bundles"
    before, calls, real_fsync = _sha(archive), [], os.fsync

    def fsync(fd: int) -> None:  # the third file cannot be written: some files are already out
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(bundle_import.os, "fsync", fsync)
    with pytest.raises(SystemExit) as exit_info:
        main(["bundles", "import", str(archive), "--root", str(root)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and "no space left" in err
    assert not root.exists() and _sha(archive) == before

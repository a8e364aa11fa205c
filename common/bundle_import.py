"""Import a Model Zoo bundle zip into a bundles folder: the counterpart of :func:`common.bundles.export_bundle`.

A zip is untrusted input. Every member is checked before anything is written (no absolute paths, drive letters,
backslashes or ``..`` components, no symlinks or other special files, no duplicate names, no encrypted members,
bounded member count and uncompressed size), the bundle is extracted into a hidden temporary folder inside the
bundles folder and renamed into place only when it is complete, so an error or a kill never leaves a partial
bundle under its own name. Nothing in the bundle is executed or imported here.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from common.errors import RobustsegError

__all__ = [
    "CHUNK_BYTES",
    "MAX_COMPRESSION_RATIO",
    "MAX_MEMBERS",
    "MAX_TOTAL_BYTES",
    "RATIO_CHECK_MIN_BYTES",
    "import_bundle",
]

MAX_MEMBERS = 20_000
"""Most members (files and folders) a bundle zip may hold; an exported robustseg bundle holds about 200."""

MAX_TOTAL_BYTES = 4 * 1024**3
"""Most bytes the members of a bundle zip may hold once uncompressed (4 GiB), counted again while extracting."""

MAX_COMPRESSION_RATIO = 200
"""Most a member larger than :data:`RATIO_CHECK_MIN_BYTES` may grow when uncompressed (uncompressed / compressed).

Weights and JSON compress by 1.1x to 10x; only a zip bomb (or a file of zeros) reaches 200x."""

RATIO_CHECK_MIN_BYTES = 1024**2
"""Members smaller than this (1 MiB uncompressed) are not held to :data:`MAX_COMPRESSION_RATIO`."""

CHUNK_BYTES = 1024**2
"""Bytes read and written at a time while extracting."""

METADATA = "configs/metadata.json"
INFERENCE_CONFIGS = ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml")
IGNORED_TOP = "__MACOSX"
"""The resource-fork folder that macOS's Finder adds to zips: skipped, never extracted."""

_DRIVE = re.compile(r"^[A-Za-z]:")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class _Member:
    """One member to extract: its zip entry and its path relative to the bundle folder ("" for the folder)."""

    info: zipfile.ZipInfo
    rel: str
    is_dir: bool


def _check_bundle_name(name: str, what: str) -> str:
    """``name`` if it is a plain folder name; ``what`` says where it came from, for the error line."""
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\x00"):
        raise RobustsegError(
            f"{what} {name!r}: not a plain folder name; expected a name without '/', '\\', NUL, and not '.' or '..'."
        )
    return name


def _sanitised(text: str) -> str:
    """A folder name made of ``text``: runs of characters other than letters, digits, ``.``, ``_``, ``-`` become
    ``_`` and the ends are stripped of ``._-`` ("BraTS MRI segmentation" -> "BraTS_MRI_segmentation")."""
    return _UNSAFE_NAME_CHARS.sub("_", text).strip("._-")


def _member_path(archive: Path, info: zipfile.ZipInfo) -> tuple[str, bool]:
    """The normalised relative path of a member (no trailing slash) and whether it is a folder.

    Raises:
        RobustsegError: the name is absolute, has a drive letter, a backslash, NUL or a ``..`` component, or the
            member is a symlink, another special file, or encrypted.
    """
    raw = info.orig_filename
    where = f"{archive}: member {raw!r}"
    if "\x00" in raw or "\\" in raw:
        raise RobustsegError(f"{where}: NUL or backslash in its name; expected '/'-separated relative paths.")
    if raw.startswith("/") or _DRIVE.match(raw):
        raise RobustsegError(f"{where}: absolute path; expected paths relative to the bundle folder.")
    parts = raw.split("/")
    if ".." in parts:
        raise RobustsegError(f"{where}: '..' component (would write outside the bundle folder); expected none.")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise RobustsegError(f"{where}: a symbolic link; expected regular files and folders only.")
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise RobustsegError(f"{where}: a special file (mode {oct(mode)}); expected regular files and folders only.")
    if info.flag_bits & 0x1:
        raise RobustsegError(f"{where}: encrypted; expected an unencrypted zip.")
    is_dir = info.is_dir() or stat.S_ISDIR(mode)
    return "/".join(p for p in parts if p not in ("", ".")), is_dir


def _check_members(archive: Path, infos: list[zipfile.ZipInfo]) -> dict[str, tuple[zipfile.ZipInfo, bool]]:
    """Check every member's name, type and size; return ``{normalised path: (entry, is folder)}``.

    Raises:
        RobustsegError: an unsafe member, duplicate names, a file that is also a folder, or too many or too large
            members (see the module constants).
    """
    if len(infos) > MAX_MEMBERS:
        raise RobustsegError(f"{archive}: {len(infos)} members; expected at most {MAX_MEMBERS} (MAX_MEMBERS).")
    members: dict[str, tuple[zipfile.ZipInfo, bool]] = {}
    total = 0
    for info in infos:
        path, is_dir = _member_path(archive, info)
        if not path or path.split("/")[0] == IGNORED_TOP:
            continue
        if path in members:
            raise RobustsegError(f"{archive}: member {path!r} appears more than once; expected unique names.")
        members[path] = (info, is_dir)
        if is_dir:
            continue
        total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise RobustsegError(
                f"{archive}: members hold more than {MAX_TOTAL_BYTES} bytes uncompressed; expected at most that "
                "(MAX_TOTAL_BYTES)."
            )
        if info.file_size > RATIO_CHECK_MIN_BYTES and info.file_size > MAX_COMPRESSION_RATIO * info.compress_size:
            raise RobustsegError(
                f"{archive}: member {path!r} expands {info.file_size} / {info.compress_size} bytes; expected a "
                f"compression ratio of at most {MAX_COMPRESSION_RATIO} (MAX_COMPRESSION_RATIO)."
            )
    for path in members:
        parents = path.split("/")[:-1]
        for depth in range(1, len(parents) + 1):
            parent = "/".join(parents[:depth])
            if parent in members and not members[parent][1]:
                raise RobustsegError(f"{archive}: member {parent!r} is a file and a folder; expected one or the other.")
    return members


def _bundle_layout(archive: Path, members: dict[str, tuple[zipfile.ZipInfo, bool]]) -> str:
    """The folder inside the zip that holds the bundle: ``""`` (``configs/`` at the top) or its one top folder.

    Raises:
        RobustsegError: no ``configs/metadata.json`` where a bundle's would be.
    """
    if METADATA in members:
        return ""
    tops = sorted({path.split("/")[0] for path in members})
    if len(tops) == 1 and f"{tops[0]}/{METADATA}" in members:
        return tops[0]
    if len(tops) > 1:
        shown = ", ".join(tops[:5]) + (", ..." if len(tops) > 5 else "")
        raise RobustsegError(
            f"{archive}: {len(tops)} top-level entries ({shown}) and no {METADATA} at the top; expected one folder "
            f"<name>/ holding {METADATA}, or {METADATA} at the top."
        )
    where = f"{tops[0]}/{METADATA}" if tops else METADATA
    raise RobustsegError(f"{archive}: no {where}; expected a Model Zoo bundle with {METADATA}.")


def _read_metadata(archive: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> dict:
    """The bundle's metadata, a JSON object.

    Raises:
        RobustsegError: it is not UTF-8 JSON or not an object.
    """
    try:
        data = zf.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise RobustsegError(f"{archive}: {info.orig_filename} is corrupt ({exc}); expected a valid zip.") from None
    try:
        metadata = json.loads(data.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError is a ValueError
        raise RobustsegError(
            f"{archive}: {info.orig_filename} is not valid JSON ({exc}); expected a JSON object."
        ) from None
    if not isinstance(metadata, dict):
        kind = type(metadata).__name__
        raise RobustsegError(f"{archive}: {info.orig_filename} holds a {kind}; expected a JSON object.")
    return metadata


def _bundle_name(archive: Path, prefix: str, metadata: dict, name: str | None) -> str:
    """The folder name: ``name`` if given, else the zip's top folder, else the metadata's name, else the zip's stem."""
    if name is not None:
        return _check_bundle_name(name, "name")
    if prefix:
        return _check_bundle_name(prefix, f"{archive}: top folder")
    for candidate in (metadata.get("name"), archive.stem):
        if isinstance(candidate, str) and _sanitised(candidate):
            return _check_bundle_name(_sanitised(candidate), f"{archive}: bundle name")
    raise RobustsegError(f"{archive}: no usable bundle name in metadata or file name; expected --name NAME.")


def _extract(archive: Path, zf: zipfile.ZipFile, members: list[_Member], folder: Path) -> None:
    """Write ``members`` under ``folder`` (an empty folder), counting every byte against the limits.

    Raises:
        RobustsegError: a member is corrupt (bad CRC, truncated) or holds more bytes than its header says.
    """
    written = 0
    base = os.path.realpath(folder)
    for member in members:
        target = folder / member.rel
        # belt and braces: names were checked, and only real folders were made, so this always holds
        if os.path.commonpath([base, os.path.realpath(target)]) != base:
            raise RobustsegError(f"{archive}: member {member.info.orig_filename!r} leaves the bundle folder.")
        if member.is_dir:
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        size = 0
        try:
            with zf.open(member.info) as source, open(target, "xb") as sink:
                while chunk := source.read(CHUNK_BYTES):
                    size += len(chunk)
                    written += len(chunk)
                    if size > member.info.file_size or written > MAX_TOTAL_BYTES:
                        raise RobustsegError(
                            f"{archive}: member {member.info.orig_filename!r} expands beyond its declared "
                            f"{member.info.file_size} bytes or the {MAX_TOTAL_BYTES}-byte limit; expected neither."
                        )
                    sink.write(chunk)
                sink.flush()
                os.fsync(sink.fileno())
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
            raise RobustsegError(
                f"{archive}: member {member.info.orig_filename!r} is corrupt or unsupported ({exc}); "
                "expected a valid zip."
            ) from None


def _remove(path: Path) -> None:
    """Remove a folder tree, or a file or symlink, if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def import_bundle(
    archive: str | os.PathLike, root: str | os.PathLike = "bundles", name: str | None = None, force: bool = False
) -> Path:
    """Unpack a Model Zoo bundle zip into ``<root>/<name>``, checking it as untrusted input.

    Two layouts are accepted: the one :func:`~common.bundles.export_bundle` and the Model Zoo write (one top folder
    ``<name>/`` holding ``configs/``, ``models/``, ...), and a zip whose top level is the bundle itself
    (``configs/metadata.json`` at the root). The bundle needs ``configs/metadata.json`` (a JSON object) and one of
    ``configs/inference.json``/``.yaml``/``.yml``; robustseg's own metadata is not required, so third-party bundles
    import as they are. macOS's ``__MACOSX/`` folder is skipped.

    All checks run before anything is written; each failure is one error line and leaves the zip and ``root`` as
    they were. The bundle is extracted into a hidden temporary folder ``<root>/.<name>.*.import`` and renamed into
    place when complete; with ``force`` an existing bundle is renamed aside, the new one renamed in, then the old one
    deleted, so a failure leaves the old bundle intact. (A process killed mid-extraction leaves only the hidden
    temporary folder, never a partial bundle; it can be deleted.) Files are written without execute permission and
    with their content only.

    Nothing is executed or imported here, but a bundle's configs run code when the bundle is used: ``_target_``
    instantiates any importable class, ``$`` expressions are Python, and a bundle may ship its own packages (an
    exported robustseg bundle ships ``common/``). Import third-party bundles only from sources you trust, and read
    their configs first.

    Args:
        archive: the zip file.
        root: the folder holding the bundles (created if missing).
        name: the bundle's folder name under ``root``. Default: the zip's top folder; for a zip with ``configs/`` at
            the top, ``metadata.json``'s ``"name"`` made a folder name (``"BraTS MRI seg"`` -> ``BraTS_MRI_seg``),
            else the zip's stem.
        force: replace an existing ``<root>/<name>``.

    Returns:
        The bundle's folder, ``<root>/<name>``.

    Raises:
        RobustsegError: the zip is missing, not a zip or corrupt; a member is unsafe (absolute path, drive letter,
            backslash, ``..``, symlink, special file, duplicate name, encrypted); it exceeds :data:`MAX_MEMBERS`,
            :data:`MAX_TOTAL_BYTES` or :data:`MAX_COMPRESSION_RATIO`; it is not a bundle; the name is not a plain
            folder name; ``<root>/<name>`` exists and ``force`` is not set; or there is not enough free space.

    Example::

        import_bundle("brats_mri_segmentation_v0.5.3.zip", root="bundles")  # -> bundles/brats_mri_segmentation
    """
    archive = Path(archive).expanduser()
    if not archive.exists():
        raise RobustsegError(f"{archive}: not found; expected a bundle zip file.")
    if archive.is_dir():
        raise RobustsegError(f"{archive}: is a folder; expected a bundle zip file.")
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as exc:
        raise RobustsegError(f"{archive}: not a zip file ({exc}); expected a Model Zoo bundle zip.") from None
    with zf:
        members = _check_members(archive, zf.infolist())
        prefix = _bundle_layout(archive, members)
        lead = f"{prefix}/" if prefix else ""
        if not any(f"{lead}{config}" in members for config in INFERENCE_CONFIGS):
            raise RobustsegError(
                f"{archive}: no {lead}configs/inference.json, .yaml or .yml; expected a bundle with an "
                "inference config."
            )
        metadata = _read_metadata(archive, zf, members[f"{lead}{METADATA}"][0])
        name = _bundle_name(archive, prefix, metadata, name)
        to_extract = [
            _Member(info, path[len(lead) :], is_dir) for path, (info, is_dir) in members.items() if path != prefix
        ]
        root = Path(root).expanduser()
        target = root / name
        if target.exists() or target.is_symlink():
            if not force:
                raise RobustsegError(
                    f"{target}: a bundle of that name exists; pass --force to replace it or --name to import under "
                    "another name."
                )
            if Path(os.path.realpath(archive)).is_relative_to(os.path.realpath(target)):
                raise RobustsegError(f"{archive}: lies inside {target}, which it would replace; move the zip first.")
        if root.exists() and not root.is_dir():
            raise RobustsegError(f"root {root}: not a folder; expected the folder that holds the bundles.")
        needed = sum(m.info.file_size for m in to_extract if not m.is_dir)
        existing = next(p for p in (root, *root.absolute().parents) if p.exists())
        free = shutil.disk_usage(existing).free
        if needed > free:
            raise RobustsegError(f"{root}: {free} bytes free; expected at least {needed} to extract {archive}.")
        created = [p for p in (root, *root.absolute().parents) if not p.exists()]
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.", suffix=".import"))
        try:
            os.chmod(staging, 0o777 & ~_umask())  # mkdtemp gives 0o700; a bundle folder is for sharing
            _extract(archive, zf, to_extract, staging)
            _swap_in(staging, target, force)
        except BaseException:
            _remove(staging)
            for folder in created:  # innermost first; a folder someone else filled meanwhile stays
                try:
                    folder.rmdir()
                except OSError:
                    break
            raise
    return target


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _swap_in(staging: Path, target: Path, force: bool) -> None:
    """Rename the complete ``staging`` folder to ``target``; with ``force``, the old ``target`` goes aside first and
    is deleted only once the new one is in place (restored if the rename fails).

    Raises:
        RobustsegError: ``target`` appeared meanwhile and ``force`` is not set.
    """
    aside = None
    if force and (target.exists() or target.is_symlink()):
        aside = target.with_name(f".{target.name}.{secrets.token_hex(4)}.old")
        os.rename(target, aside)
    try:
        os.rename(staging, target)
    except OSError as exc:
        if aside is not None:
            os.rename(aside, target)
        if target.exists():
            raise RobustsegError(
                f"{target}: a bundle of that name appeared during the import; pass --force to replace it or --name."
            ) from exc
        raise
    if aside is not None:
        _remove(aside)

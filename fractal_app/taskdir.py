"""The Golem folder layout: where every file of a task lives, on both sides, and the checks
that keep names from the outside world inside it.

A Golem node gives the requestor one work directory holding a folder per task
(:class:`RequestorTaskDir`), and each provider process a work directory of its own for one
subtask (:class:`ProviderTaskDir`). The protocol fixes the four folder names
(:mod:`fractal_app.protocol.constants`); this module adds the app's own names (the scene
resource, the band and result files, the requestor's state) and is the only place that
spells any of them.

Every name that arrives from outside (a task id, a subtask id, a resource name, a provider's
output path) passes :func:`check_name` before it becomes a path, and nothing is read, written
or deleted through a symlink planted below the work directory (:func:`real_folder`).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from fractal_app.errors import FailedPrecondition, InvalidArgument
from fractal_app.outputs import OUTPUTS
from fractal_app.protocol.constants import (
    SUBTASK_INPUTS_DIR,
    SUBTASK_OUTPUTS_DIR,
    TASK_INPUTS_DIR,
    TASK_OUTPUTS_DIR,
)

# The one resource every subtask ships: the validated scene, defaults filled in.
SCENE_RESOURCE = "scene.json"
# The scene resource is small JSON (scene.MAX_PARAMS_BYTES and the defaults filled in).
MAX_RESOURCE_BYTES = 1 << 20
# What a provider writes for its band, in ``{subtask_id}/``; the node sends it to the
# requestor's ``subtask_outputs/{subtask_id}/`` under the same name.
BAND_FILE = "band.png"
# The one file ``task_outputs`` holds once every band is accepted, by the scene's output
# (each output format declares its own: fractal_app/outputs.py).
RESULT_FILES = {name: fmt.result_file for name, fmt in OUTPUTS.items()}
# The requestor's own files: outside the four protocol folders, so task_outputs holds the
# result and nothing else.
APP_STATE_DIR = "app_state"
STATE_DATABASE = "state.sqlite3"
BANDS_DIR = "bands"
PARTIAL_RESULT = ".result.partial"

MAX_NAME_LENGTH = 128
# Letters, digits, '.', '_', '-', not starting with '.': no separators, no '..', no NUL,
# nothing absolute, nothing hidden. Golem's ids are UUIDs, well inside this.
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def result_file_name(output: str) -> str:
    """The name of the final file for a scene's ``output`` ("image" or "counts")."""
    return RESULT_FILES[output]


def check_name(kind: str, value: str) -> str:
    """Return ``value`` if it is safe as one path component, else raise InvalidArgument.

    ``kind`` names the field in the message ("task_id", "subtask_id", "resource name").
    """
    if not isinstance(value, str) or value == "":
        raise InvalidArgument(f"{kind} is empty; give a non-empty name")
    shown = repr(value[:40]) + ("..." if len(value) > 40 else "")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidArgument(
            f"{kind} {shown} is {len(value)} characters; at most {MAX_NAME_LENGTH}"
        )
    if "\x00" in value:
        raise InvalidArgument(f"{kind} {shown} contains a NUL character")
    if "/" in value or "\\" in value or value.startswith("/"):
        raise InvalidArgument(f"{kind} {shown} contains a path separator ('/' or '\\')")
    if ".." in value:
        raise InvalidArgument(f"{kind} {shown} contains '..'")
    if not _NAME.fullmatch(value):
        raise InvalidArgument(
            f"{kind} {shown} may use only letters, digits, '.', '_' and '-', and must not"
            " start with '.'"
        )
    return value


def check_relative_path(kind: str, value: str, root: Path) -> Path:
    """Resolve a relative path from the outside world (e.g. a provider's output path) under root.

    Every component must pass :func:`check_name`; the result is inside ``root``.
    """
    if not isinstance(value, str) or value == "":
        raise InvalidArgument(f"{kind} is empty")
    if value.startswith(("/", "\\")):
        raise InvalidArgument(f"{kind} {value[:80]!r} is absolute; it must be relative")
    parts = value.split("/")
    for part in parts:
        check_name(kind, part)
    return root.joinpath(*parts)


def real_folder(base: Path, relative: str | Path, create: bool = False) -> Path:
    """``base / relative``, after checking that every folder on the way below ``base`` is a
    real folder and not a symlink (FailedPrecondition otherwise); missing ones are made when
    ``create``.

    Whoever planted a symlink in the work directory (a node, another process), nothing is
    read, written or deleted through it: a ``task_outputs`` that points elsewhere would have
    the requestor clear the folder it points to. ``base`` itself is trusted (the work
    directory may well be a mount or a link the operator chose).
    """
    folder = Path(base)
    for part in Path(relative).parts:
        folder = folder / part
        try:
            info = os.lstat(folder)
        except FileNotFoundError:
            if not create:
                return Path(base) / relative
            try:
                os.mkdir(folder)
            except FileExistsError:  # made meanwhile: check what it is
                info = os.lstat(folder)
            else:
                continue
        shown = folder.relative_to(base)
        if stat.S_ISLNK(info.st_mode):
            raise FailedPrecondition(
                f"{shown} in the work directory is a symlink; fractal-app never reads, writes"
                " or deletes through one: replace it with a real folder"
            )
        if not stat.S_ISDIR(info.st_mode):
            raise FailedPrecondition(
                f"{shown} in the work directory is not a folder; remove it or choose another id"
            )
    return folder


@dataclass(frozen=True)
class RequestorTaskDir:
    """Where everything of one task lives on the requestor, under ``{work_dir}/{task_id}/``."""

    root: Path

    @classmethod
    def of(cls, work_dir: Path, task_id: str) -> RequestorTaskDir:
        return cls(Path(work_dir) / check_name("task_id", task_id))

    @property
    def task_id(self) -> str:
        return self.root.name

    def checked(self, folder: Path, create: bool = False) -> Path:
        """``folder`` (one of this task's), each step from the work directory down a real
        folder, not a symlink; see :func:`real_folder`."""
        work_dir = self.root.parent
        return real_folder(work_dir, folder.relative_to(work_dir), create)

    @property
    def task_inputs(self) -> Path:
        return self.root / TASK_INPUTS_DIR

    @property
    def subtask_inputs(self) -> Path:
        return self.root / SUBTASK_INPUTS_DIR

    @property
    def task_outputs(self) -> Path:
        return self.root / TASK_OUTPUTS_DIR

    @property
    def subtask_outputs(self) -> Path:
        return self.root / SUBTASK_OUTPUTS_DIR

    @property
    def scene_resource(self) -> Path:
        """The scene every provider gets, among the resources the node ships."""
        return self.subtask_inputs / SCENE_RESOURCE

    def result_dir(self, subtask_id: str) -> Path:
        """Where the node puts a provider's result file before it calls Verify."""
        return self.subtask_outputs / check_name("subtask_id", subtask_id)

    def result_file(self, output: str) -> Path:
        """The final file in ``task_outputs`` for a scene's ``output``."""
        return self.task_outputs / result_file_name(output)

    @property
    def state(self) -> Path:
        return self.root / APP_STATE_DIR

    @property
    def database(self) -> Path:
        return self.state / STATE_DATABASE

    @property
    def partial_result(self) -> Path:
        """The final file while it is written (moved into task_outputs once complete)."""
        return self.state / PARTIAL_RESULT

    @property
    def bands(self) -> Path:
        """Accepted band values, one ``.npy`` per band index."""
        return self.state / BANDS_DIR

    def band_values(self, band_index: int) -> Path:
        return self.bands / f"{band_index}.npy"

    def prepare(self) -> None:
        """What a node does before CreateTask: the task folder with its four empty folders
        (local mode and tests play the node)."""
        for folder in (
            self.task_inputs,
            self.subtask_inputs,
            self.task_outputs,
            self.subtask_outputs,
        ):
            folder.mkdir(parents=True, exist_ok=True)

    def make_folders(self) -> None:
        """Create the protocol folders (a node makes them; local mode and tests may not) and
        the requestor's own, never through a symlink."""
        for folder in (
            self.task_inputs,
            self.subtask_inputs,
            self.task_outputs,
            self.subtask_outputs,
            self.bands,
        ):
            self.checked(folder, create=True)


@dataclass(frozen=True)
class ProviderTaskDir:
    """A provider's work directory for one subtask: the resources the node shipped in
    ``subtask_inputs/``, and the band the provider writes in ``{subtask_id}/``."""

    root: Path

    @property
    def subtask_inputs(self) -> Path:
        return self.root / SUBTASK_INPUTS_DIR

    def resource(self, name: str) -> Path:
        """Where the node puts the resource ``name`` (a name from outside: checked)."""
        return self.subtask_inputs / check_name("resource name", name)

    def band_output(self, subtask_id: str) -> str:
        """The band file's path relative to the work directory: Compute's reply."""
        return f"{check_name('subtask_id', subtask_id)}/{BAND_FILE}"

    def band_file(self, subtask_id: str, create: bool = False) -> Path:
        """The band file's path, its folder a real one (made when ``create``), never a
        symlink a node (or anyone) planted, so the band is never written outside the work
        directory."""
        return real_folder(self.root, check_name("subtask_id", subtask_id), create) / BAND_FILE

    def prepare(self) -> None:
        """What a node does before starting a provider: its empty ``subtask_inputs``."""
        self.subtask_inputs.mkdir(parents=True)

    def read_resource(self, name: str) -> str:
        """A subtask resource, if it is a regular file (not a symlink, a FIFO that would
        block the provider, or a device) of sane size, as text."""
        where = f"{SUBTASK_INPUTS_DIR}/{name}"
        folder = real_folder(self.root, SUBTASK_INPUTS_DIR)
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(folder / check_name("resource name", name), flags)
        except OSError as error:
            raise FailedPrecondition(
                f"cannot read the task's scene at {where}: {error.strerror}; the node must ship"
                " the subtask's resources (regular files, not symlinks)"
            ) from None
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise FailedPrecondition(f"{where} is not a regular file; the node must ship one")
            if info.st_size > MAX_RESOURCE_BYTES:
                raise FailedPrecondition(
                    f"{where} is {info.st_size:,} bytes; a scene is far smaller"
                )
            data = handle.read(MAX_RESOURCE_BYTES + 1)
        try:
            return data.decode()
        except UnicodeDecodeError:
            raise FailedPrecondition(f"{where} is not UTF-8 text") from None

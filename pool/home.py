"""The home directory: where the pool file, lock files, config and vault live.

``AUTHPOOL_HOME`` wins; otherwise the platform's user data dir for ``authpool``. The directory
is 0700 and every file in it 0600, because the pool file reveals which accounts exist and the
vault key file unlocks the encrypted secrets. Wrong modes are repaired on open and each repair is
logged (``authpool doctor`` lists them), so a permissive umask never leaves secrets readable.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from authpool.errors import StoreError

__all__ = ["DIR_MODE", "FILE_MODE", "Home", "ModeProblem", "resolve_home"]

log = logging.getLogger("authpool")

DIR_MODE = 0o700
FILE_MODE = 0o600


def resolve_home() -> Path:
    """Return the home directory path: ``$AUTHPOOL_HOME`` or the platform user data dir."""
    env = os.environ.get("AUTHPOOL_HOME")
    if env:
        return Path(env).expanduser().absolute()
    import platformdirs  # imported late: only needed when no AUTHPOOL_HOME is set

    return Path(platformdirs.user_data_dir("authpool", appauthor=False))


@dataclass(frozen=True)
class ModeProblem:
    """A file or directory whose permission bits were (or are) too open."""

    path: Path
    found: int
    wanted: int

    def __str__(self) -> str:
        return f"{self.path}: mode {self.found:04o}, should be {self.wanted:04o}"


@dataclass
class Home:
    """An opened home directory.

    Example:
        >>> home = Home.open(Path("/tmp/authpool-home"))  # doctest: +SKIP
        >>> home.pool_db.name
        'pool.db'
    """

    path: Path

    @classmethod
    def open(cls, path: Path | None = None, *, repair: bool = True) -> Home:
        """Create the directory if needed and check (and by default repair) its modes.

        Raises:
            StoreError: the directory cannot be created or is not a directory.
        """
        home = cls(path or resolve_home())
        try:
            home.path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create home directory {home.path}: {e.strerror}") from e
        if not home.path.is_dir():
            raise StoreError(f"home {home.path} exists but is not a directory")
        problems = home.mode_problems()
        if repair and os.name == "posix":
            for p in problems:
                try:
                    os.chmod(p.path, p.wanted)
                except OSError as e:
                    raise StoreError(f"cannot fix the mode of {p.path}: {e.strerror}") from e
                log.warning("fixed permissions: %s", p)
        return home

    @property
    def pool_db(self) -> Path:
        """The pool's metadata (an SQLite database, :mod:`authpool.storage.localstore`)."""
        return self.path / "pool.db"

    @property
    def pool_file(self) -> Path:
        """Where authpool 0.1 kept the metadata (moved into ``pool_db`` on the first write)."""
        return self.path / "pool.json"

    @property
    def events_file(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def config_file(self) -> Path:
        return self.path / "config.toml"

    @property
    def vault_file(self) -> Path:
        return self.path / "vault.db"

    @property
    def legacy_vault_file(self) -> Path:
        """The vault as authpool wrote it before 0.2's ``vault.db`` (moved in on the first write)."""
        return self.path / "vault.json"

    @property
    def vault_key_file(self) -> Path:
        return self.path / "vault.key"

    @property
    def locks_dir(self) -> Path:
        return self.path / "locks"

    def lock_file(self, name: str) -> Path:
        """Path of the lock file ``name`` (created 0700 dir on first use; never deleted)."""
        self.locks_dir.mkdir(mode=DIR_MODE, exist_ok=True)
        return self.locks_dir / f"{name}.lock"

    def mode_problems(self) -> list[ModeProblem]:
        """List every entry of the home whose mode is more open than it should be."""
        if os.name != "posix":
            return []  # Windows has ACLs, not mode bits; the user profile dir is private already
        found: list[ModeProblem] = []
        for entry in [self.path, *self._entries()]:
            try:
                st = entry.lstat()
            except FileNotFoundError:
                continue  # removed between listing and stat: nothing to check
            if stat.S_ISLNK(st.st_mode):
                continue
            wanted = DIR_MODE if stat.S_ISDIR(st.st_mode) else FILE_MODE
            if stat.S_IMODE(st.st_mode) & ~wanted:
                found.append(ModeProblem(entry, stat.S_IMODE(st.st_mode), wanted))
        return found

    def _entries(self) -> list[Path]:
        out: list[Path] = []
        for child in self.path.iterdir():
            out.append(child)
            if child.is_dir() and not child.is_symlink():
                out.extend(child.iterdir())
        return out

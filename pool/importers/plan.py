"""Matching candidates against the pool, choosing labels, and adding the new accounts."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from authpool.accounts.model import Account, AccountKind, LinkedFile, validate_label
from authpool.auth.linked import LINKABLE
from authpool.errors import DuplicateLabel, InvalidInput
from authpool.importers.candidate import Candidate
from authpool.pool import Pool
from authpool.storage.lock import Lock

__all__ = ["Step", "apply_import", "import_candidates", "plan_import", "select"]


def select(candidates: Iterable[Candidate], *, provider: str | None = None,
           kind: AccountKind | None = None) -> list[Candidate]:
    """The candidates of ``provider`` and ``kind`` (None: any)."""
    return [c for c in candidates if (provider is None or c.provider == provider) and (kind is None or c.kind == kind)]


@dataclass(frozen=True)
class Step:
    """What importing one candidate does: add it as ``provider/label``, or nothing (``existing``)."""

    candidate: Candidate
    label: str
    existing: Account | None = None
    label_given: bool = False

    @property
    def action(self) -> Literal["add", "exists"]:
        return "exists" if self.existing is not None else "add"

    @property
    def name(self) -> str:
        """``provider/label`` the candidate has or will have."""
        return self.existing.name if self.existing is not None else f"{self.candidate.provider}/{self.label}"


def plan_import(pool: Pool | None, candidates: list[Candidate], *, label: str | None = None) -> list[Step]:
    """Match ``candidates`` against ``pool`` (None: an empty pool) and choose their labels.

    A candidate whose refresh token or API key an account of its provider already holds is that
    account ("already imported"). The others get ``label``, or their suggested label made unique
    within the provider (``-2``, ``-3``, ...). Reads the pool; changes nothing.

    Raises:
        InvalidInput: ``label`` is given but there is not exactly one candidate, or it is invalid.
        DuplicateLabel: ``label`` is taken by another account of the provider.
    """
    if label is not None:
        label = validate_label(label)
        if len(candidates) != 1:
            found = ", ".join(f"{c.provider} {c.kind}" for c in candidates) or "none"
            raise InvalidInput(f"--label names one account, but {len(candidates)} were found ({found}); "
                               "narrow the import with --provider or --kind")
    taken: dict[str, set[str]] = {}
    steps: list[Step] = []
    for c in candidates:
        existing = pool.find_by_secret(c.provider, c.is_same_login) if pool is not None else None
        if existing is not None:
            steps.append(Step(c, existing.label, existing))
            continue
        if c.provider not in taken:
            taken[c.provider] = {a.label.casefold() for a in pool.accounts(c.provider)} if pool else set()
        labels = taken[c.provider]
        if label is not None:
            if label.casefold() in labels:
                raise DuplicateLabel(f"{c.provider}/{label} already exists; choose another --label")
            chosen = label
        else:
            chosen = _free_label(validate_label(c.label), labels)
        labels.add(chosen.casefold())
        steps.append(Step(c, chosen, label_given=label is not None))
    return steps


def _free_label(base: str, taken: set[str]) -> str:
    if base.casefold() not in taken:
        return base
    n = 2
    while True:
        suffix = f"-{n}"
        candidate = base[: 100 - len(suffix)] + suffix
        if candidate.casefold() not in taken:
            return candidate
        n += 1


def apply_import(pool: Pool, steps: list[Step], *, namespace: str = "default") -> Iterator[tuple[Step, Account]]:
    """Add every ``add`` step's account; yields ``(step, account)`` for each as it is added.

    Steps whose login is already in the pool are yielded with that account and change nothing.
    In particular an OAuth account's stored tokens are never replaced by the source's copy:
    once imported, authpool may have refreshed the login, and with providers that rotate refresh
    tokens the copy in the other tool's file is then the older, already-spent one. Writing it
    over the stored tokens would throw away the live login.

    Raises:
        DuplicateLabel: a ``--label`` was taken meanwhile by another process.
        SecretError, StoreError: the credential store or pool file failed (earlier accounts stay).
    """
    for step in steps:
        if step.existing is not None:
            # Already imported: leave its secret alone, even if the source's copy differs in its
            # access token or expiry. The account may have been refreshed since (possibly rotating
            # the refresh token); the file's copy is then the older one, and writing it back
            # would replace a live login with a spent one.
            yield step, step.existing
            continue
        c = step.candidate
        label = step.label
        for _attempt in range(20):  # bounded: each retry means another process took the label just now
            try:
                if c.tokens is not None:
                    account = pool.add_oauth(c.provider, label, c.tokens, namespace=namespace)
                else:
                    account = pool.add_api_key(c.provider, label, c.api_key or "", namespace=namespace)
                break
            except DuplicateLabel:
                if step.label_given:
                    raise
                label = _free_label(validate_label(c.label), {a.label.casefold() for a in pool.accounts(c.provider)})
        else:
            raise DuplicateLabel(f"could not find a free label for {c.provider}/{step.label}")
        yield Step(c, label, None, step.label_given), account


def import_candidates(pool: Pool, candidates: list[Candidate], *, label: str | None = None,
                      namespace: str = "default", link: Path | None = None) -> Iterator[tuple[Step, Account]]:
    """Plan and apply in one go, one import at a time per home; yields like :func:`apply_import`.

    Two imports of the same file running at once would both find the login new and add it
    twice, so planning and adding happen under the home's import lock, against the pool as it
    is once the lock is held.

    ``link``: the tool's credential file, to keep each OAuth login linked to it (``import --link``).

    Raises:
        LockTimeout: another import held the lock too long.
        Everything :func:`plan_import` and :func:`apply_import` raise.
    """
    with Lock(pool.home.lock_file("import")):
        steps = plan_import(pool, candidates, label=label)
        for step, added in apply_import(pool, steps, namespace=namespace):
            c = step.candidate
            linkable = LinkedFile.model_validate({"source": c.source, "path": str(link), "entry": c.entry}) \
                if link is not None and c.kind == "oauth" and c.source in LINKABLE else None
            yield step, pool.link(added.id, linkable) if linkable is not None else added

"""A batch of new API-key accounts, checked as a whole before anything of it is stored.

``Pool.add_api_keys`` (and ``authpool accounts add-key --from-file``) add all of a batch or none
of it, so every entry is checked first: its label, its key, a label used twice in the batch, a
label the provider has already. An error names the entry by its position (``entry``, from 1) and
never repeats the entry's label or key: a key pasted into the label field must not reach a
terminal or a log.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from authpool.accounts.model import PoolFile, new_account_id, validate_label
from authpool.accounts.secret import Secret
from authpool.errors import DuplicateLabel, InvalidInput

__all__ = ["KeyBatch"]


@dataclass(frozen=True)
class KeyBatch:
    """Checked ``(label, secret)`` entries, in the order given."""

    labels: list[str]
    secrets: list[Secret]
    entry_of: dict[str, int]  # folded label -> its entry's position (from 1)

    @classmethod
    def check(cls, entries: Iterable[tuple[str, str]], *, names: Sequence[str] | None = None) -> KeyBatch:
        """Check every ``(label, key)`` entry.

        ``names`` say how an error refers to another entry (``line 3`` for a file); by default
        ``entry 3``.

        Raises:
            InvalidInput: an entry's label or key is malformed (``entry`` names it).
            DuplicateLabel: two entries share a label, compared as the pool compares labels (case-folded).
        """
        labels: list[str] = []
        secrets: list[Secret] = []
        entry_of: dict[str, int] = {}
        for n, (raw_label, key) in enumerate(entries, 1):
            try:
                label = validate_label(raw_label)
            except InvalidInput:
                raise InvalidInput("the label must be 1-100 printable characters, without '/'", entry=n) from None
            try:
                secret = Secret.from_api_key(key)
            except InvalidInput as e:
                raise InvalidInput(e.problem, entry=n) from None
            folded = label.casefold()
            if folded in entry_of:
                first = entry_of[folded]
                name = names[first - 1] if names is not None else f"entry {first}"
                raise DuplicateLabel(f"its label is also the label of {name}", entry=n)
            entry_of[folded] = n
            labels.append(label)
            secrets.append(secret)
        return cls(labels, secrets, entry_of)

    def refuse_taken(self, provider: str, pool: PoolFile) -> None:
        """Refuse the whole batch if ``provider`` has an account in ``pool`` with one of its labels.

        Raises:
            DuplicateLabel: names the first such entry and the account that has its label.
        """
        # One pass over the provider's accounts (a snapshot's index keeps them apart), not a search per entry.
        holders = {acc.label.casefold(): acc for acc in pool.for_provider(provider)}
        for folded, n in self.entry_of.items():
            acc = holders.get(folded)
            if acc is not None:
                raise DuplicateLabel(f"{provider} has an account with this label already ({acc.id})", entry=n)

    def new_ids(self, pool: PoolFile) -> list[str]:
        """One new account id per entry: none used in ``pool``, none twice."""
        taken = {a.id for a in pool.accounts}
        ids: list[str] = []
        while len(ids) < len(self.labels):
            candidate = new_account_id()
            if candidate not in taken:
                taken.add(candidate)
                ids.append(candidate)
        return ids

    def __len__(self) -> int:
        return len(self.labels)

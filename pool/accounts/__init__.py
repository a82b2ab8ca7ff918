"""Accounts: the model of every account and its secret, and the public views of them."""

from __future__ import annotations

from authpool.accounts import transitions
from authpool.accounts.listing import AccountPage, page_accounts
from authpool.accounts.model import (
    SCHEMA_VERSION,
    WHOLE_ACCOUNT,
    Account,
    AccountKind,
    AccountState,
    Cooldown,
    Counters,
    LinkedFile,
    PoolFile,
    QuotaWindow,
    RefreshFailing,
    RefreshJournal,
    SessionBinding,
    new_account_id,
    validate_label,
    validate_provider_id,
)
from authpool.accounts.secret import Secret, TokenSet, time_left
from authpool.accounts.views import (
    SHOWN_LIMIT,
    account_view,
    describe_windows,
    fix_command,
    pool_status,
    relogin_command,
    shown_accounts,
    window_views,
)

__all__ = [
    "SCHEMA_VERSION",
    "SHOWN_LIMIT",
    "WHOLE_ACCOUNT",
    "Account",
    "AccountKind",
    "AccountPage",
    "AccountState",
    "Cooldown",
    "Counters",
    "LinkedFile",
    "PoolFile",
    "QuotaWindow",
    "RefreshFailing",
    "RefreshJournal",
    "Secret",
    "SessionBinding",
    "TokenSet",
    "account_view",
    "describe_windows",
    "fix_command",
    "new_account_id",
    "page_accounts",
    "pool_status",
    "relogin_command",
    "shown_accounts",
    "time_left",
    "transitions",
    "validate_label",
    "validate_provider_id",
    "window_views",
]

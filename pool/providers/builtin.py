"""The providers authpool knows out of the box: their real public origins and header conventions.

authpool ships no other application's OAuth client id: a built-in provider's OAuth settings
name its endpoints only; the client id comes from the user's ``config.toml``.
"""

from __future__ import annotations

from authpool.providers.provider import OAuthSettings, Provider, TokenExchange

__all__ = ["BUILTIN_PROVIDERS"]

_ANTHROPIC_RESETS = [
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-output-tokens-reset",
    "anthropic-ratelimit-unified-reset",
    "anthropic-ratelimit-unified-5h-reset",
    "anthropic-ratelimit-unified-7d-reset",
]
_OPENAI_RESETS = ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]

BUILTIN_PROVIDERS: dict[str, Provider] = {
    p.id: p
    for p in [
        Provider(
            id="anthropic",
            name="Anthropic",
            base_url="https://api.anthropic.com",
            auth="header:x-api-key",
            oauth_auth="bearer",
            headers={"anthropic-version": "2023-06-01"},
            oauth_headers={"anthropic-beta": "oauth-2025-04-20"},
            oauth=OAuthSettings(
                token_url="https://console.anthropic.com/v1/oauth/token",
                authorize_url="https://claude.ai/oauth/authorize",
                token_request="json",
            ),
            reset_headers=_ANTHROPIC_RESETS,
            shared_logins=False,
            terms="Anthropic's Consumer Terms of Service, https://www.anthropic.com/legal/consumer-terms",
        ),
        Provider(
            id="openai",
            name="OpenAI",
            base_url="https://api.openai.com",
            auth="bearer",
            oauth=OAuthSettings(
                token_url="https://auth.openai.com/oauth/token",
                authorize_url="https://auth.openai.com/oauth/authorize",
            ),
            reset_headers=_OPENAI_RESETS,
            shared_logins=False,  # the OAuth login is a ChatGPT subscription
            terms="OpenAI's Terms of Use, https://openai.com/policies/terms-of-use",
        ),
        Provider(
            id="gemini",
            name="Google Gemini",
            base_url="https://generativelanguage.googleapis.com",
            origins=["https://cloudcode-pa.googleapis.com"],
            auth="header:x-goog-api-key",
            oauth_auth="bearer",
            oauth=OAuthSettings(
                token_url="https://oauth2.googleapis.com/token",
                authorize_url="https://accounts.google.com/o/oauth2/v2/auth",
                device_authorization_url="https://oauth2.googleapis.com/device/code",
            ),
            shared_logins=False,
            terms="Google's Terms of Service and the Gemini API Additional Terms, https://ai.google.dev/gemini-api/terms",
        ),
        Provider(
            id="github-copilot",
            name="GitHub Copilot",
            base_url="https://api.githubcopilot.com",
            # The endpoint each Copilot token names (individual, business, enterprise plans).
            origins=["https://api.individual.githubcopilot.com", "https://api.business.githubcopilot.com",
                     "https://api.enterprise.githubcopilot.com"],
            auth="bearer",
            oauth=OAuthSettings(
                token_url="https://github.com/login/oauth/access_token",
                device_authorization_url="https://github.com/login/device/code",
                scopes=["read:user"],
            ),
            token_exchange=TokenExchange(url="https://api.github.com/copilot_internal/v2/token",
                                         headers={"x-github-api-version": "2025-04-01"}),
            reset_headers=["x-ratelimit-reset"],
            models_path="/models",
            shared_logins=False,
            terms="GitHub's terms for Copilot, https://docs.github.com/en/site-policy/github-terms/"
                  "github-terms-for-additional-products-and-features#github-copilot",
        ),
        Provider(
            id="chatgpt",
            name="ChatGPT plan logins (the Codex backend)",
            base_url="https://chatgpt.com/backend-api/codex",
            auth="bearer",
            oauth_auth="bearer",
            secret_headers={"chatgpt-account-id": "account_id"},
            oauth=OAuthSettings(
                token_url="https://auth.openai.com/oauth/token",
                authorize_url="https://auth.openai.com/oauth/authorize",
            ),
            reset_headers=["x-codex-primary-reset-at", "x-codex-secondary-reset-at",
                           "x-codex-primary-reset-after-seconds", "x-codex-secondary-reset-after-seconds"],
            models_style="none",  # the backend's own list is not a public API
            shared_logins=False,  # a ChatGPT subscription
            terms="OpenAI's Terms of Use, https://openai.com/policies/terms-of-use",
        ),
        Provider(
            id="openai-compatible",
            name="OpenAI-compatible (set base_url in config.toml)",
            auth="bearer",
            reset_headers=_OPENAI_RESETS,
        ),
    ]
}

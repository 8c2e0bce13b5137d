"""A tenant's webhook settings (broker/webhooks.py), as the operator's tools read and write them
in KV ``webhook_settings`` (FLEET users only; no tenant reaches it)."""

from __future__ import annotations

import re

from nats.js import JetStreamContext

from broker.auth_store import tenants
from broker.subjects import WEBHOOK_SETTINGS_BUCKET, validate_tenant
from broker.webhooks import TenantHooks, encode, new_secret, tenant_hooks, tenant_key

__all__ = ["read_settings", "write_settings"]


async def read_settings(js: JetStreamContext, tenant: str) -> TenantHooks:
    return await tenant_hooks(await js.key_value(WEBHOOK_SETTINGS_BUCKET),
                              validate_tenant(tenant))


async def write_settings(js: JetStreamContext, tenant: str, *, url: str | None,
                         rotate: bool) -> tuple[TenantHooks, bool]:
    """Set the tenant's default URL (None: keep it; "": none) and make a secret when there is
    none (or ``rotate``). Returns the settings and whether the secret is new."""
    if url and not re.fullmatch(r"https?://[^\s]+", url):
        raise ValueError(f"webhook URL {url!r} is not an http(s) URL")
    if tenant not in {t.name for t in await tenants(js)}:  # a typo would sign for no one
        raise ValueError(f"no tenant {tenant!r} (`vidfleet creds client NAME --tenant "
                         f"{tenant}` makes it)")
    current = await read_settings(js, tenant)
    fresh = rotate or not current.secret
    settings = TenantHooks(url=current.url if url is None else url,
                           secret=new_secret() if fresh else current.secret)
    kv = await js.key_value(WEBHOOK_SETTINGS_BUCKET)
    await kv.put(tenant_key(tenant), encode(settings))
    return settings, fresh

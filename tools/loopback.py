"""Clients for calls to servers on 127.0.0.1 (the tests', and their helpers' readiness polls) that do not build an
SSL context per call: `httpx.Client()`, so `httpx.get/post/…`, and `openai.OpenAI()` each load certifi's CA bundle
into a new one (about 20 ms on a 2-core machine, even for an http:// URL), more than the call itself.

- `loopback`, in place of `httpx.get/post/put/delete/stream`: one client, built once, sending the same requests:
  it keeps no connection alive between calls (each request opens and closes its own, as `httpx.post` does), has no
  cap on concurrent connections and stores no cookies; its other defaults are httpx's (5 s timeout, no redirects).
- `openai_client(base_url, **options)`, in place of `openai.OpenAI(base_url=…, **options)`: a client with its own
  connection pool and openai's defaults, as before, given an SSL context built once (an http:// URL never uses it)."""

from __future__ import annotations

import ssl
from functools import cache
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    import openai

loopback = httpx.Client(
    limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
    cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),  # nothing kept from one call to the next
)


@cache
def _ssl_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def openai_client(base_url: str, **options: Any) -> openai.OpenAI:
    """openai is imported here, not with the module: the helpers that poll through `loopback` (`serve_process`,
    `dashboard_demo`, `benchmarks.fake_upstream`) run without the dev extra that installs it."""
    import openai

    return openai.OpenAI(base_url=base_url, http_client=openai.DefaultHttpxClient(verify=_ssl_context()), **options)

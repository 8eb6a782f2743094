"""Webhook target guard (gateway/webhooks.resolve_target): only globally routable addresses,
whatever spelling carries a loopback, private or metadata IPv4 address inside IPv6."""

from __future__ import annotations

import pytest
from modelport.gateway.webhooks import WebhookTargetError, resolve_target

REFUSED = [
    "http://127.0.0.1/x", "http://10.1.2.3/x", "http://192.168.0.5/", "http://100.64.0.1/x",  # shared (CGNAT)
    "http://169.254.169.254/latest", "http://0.0.0.0/x", "http://224.0.0.1/x", "http://240.0.0.1/x",
    "http://[::1]/x", "http://[::]/x", "http://[fe80::1]/x", "http://[fc00::1]/x", "http://[fec0::1]/x",
    "http://[fd00:ec2::254]/x", "http://[ff02::1]/x", "http://[2001:db8::1]/x",
    # IPv4-mapped and IPv4-compatible
    "http://[::ffff:127.0.0.1]/x", "http://[::ffff:7f00:1]/x", "http://[::ffff:169.254.169.254]/x",
    "http://[::127.0.0.1]/x", "http://[::a9fe:a9fe]/x",
    # 6to4 (2002:AABB:CCDD::/48): loopback, metadata, private
    "http://[2002:7f00:1::]/x", "http://[2002:7f00:0001:0:0:0:0:1]/x", "http://[2002:a9fe:a9fe::1]/x",
    "http://[2002:0a00:0001::5]/x", "http://[2002:c0a8:0001::]/x",
    # Teredo (2001:0::/32; the client is stored inverted): client 127.0.0.1, client 169.254.169.254,
    # server 10.0.0.1 with a public client
    "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/x", "http://[2001:0:4136:e378:8000:63bf:5601:5601]/x",
    "http://[2001:0:a00:1:8000:63bf:f7f7:f7f7]/x",
    # NAT64 well-known prefix: loopback, metadata, and (reserved range) even a public IPv4
    "http://[64:ff9b::7f00:1]/x", "http://[64:ff9b::169.254.169.254]/x", "http://[64:ff9b::808:808]/x",
]
ALLOWED = ["http://8.8.8.8/x", "https://1.1.1.1:8443/hook", "http://[2606:4700:4700::1111]/x",
           "http://[2002:808:808::1]/x"]  # 6to4 of a public IPv4


@pytest.mark.parametrize("url", REFUSED)
def test_non_global_targets_are_refused(url, settings):
    settings.MODELPORT_WEBHOOK_ALLOW_PRIVATE = False
    with pytest.raises(WebhookTargetError, match="non-public address"):
        resolve_target(url)


@pytest.mark.parametrize("url", ALLOWED)
def test_global_targets_are_allowed(url, settings):
    settings.MODELPORT_WEBHOOK_ALLOW_PRIVATE = False
    target = resolve_target(url)
    assert target.scheme == url.split(":", 1)[0]

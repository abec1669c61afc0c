"""The loop plugin: its directive, counting the probe name, and the start-up probe against a real
loopback UDP server (answering, or silent)."""

from __future__ import annotations

import asyncio
import re
from typing import Any, cast

import dns.message
import dns.rdatatype
import pytest

from clusterdns.corefile import CorefileError, parse
from clusterdns.plugin import NOERROR, Request, Response, SiteConfig, resolve
from clusterdns.plugins import loop as lp
from clusterdns.plugins.loop import Loop
from clusterdns.wire import parse_query, reply


def directive(text: str) -> Any:
    return parse(f". {{\n{text}\n}}\n", "Corefile")[0].directives[0]


def hinfo(name: str, client: tuple[str, int] = ("127.0.0.1", 41000)) -> Request:
    return parse_query(dns.message.make_query(name, "HINFO").to_wire(), "udp", client)


async def passed(req: Request) -> Response:
    return Response(reply(req, NOERROR), NOERROR, "next")


@pytest.mark.parametrize(("zones", "binds", "zone", "target"), [
    (["."], [], ".", ("127.0.0.1", 1053)),
    (["example.org.", "example.net."], ["10.0.0.1"], "example.org.", ("10.0.0.1", 1053)),
    (["."], ["0.0.0.0"], ".", ("127.0.0.1", 1053)),
    (["."], ["::"], ".", ("::1", 1053)),
])
def test_setup_probes_the_first_zone_at_our_own_address(zones: list[str], binds: list[str], zone: str,
                                                        target: tuple[str, int]) -> None:
    site = SiteConfig(zones=zones, port=1053, corefile="Corefile", binds=binds)
    plugin = cast(Loop, lp.setup(directive("loop"), site))
    assert (plugin.zone, plugin.target) == (zone, target)
    suffix = "" if zone == "." else zone
    assert re.fullmatch(r"\d+\.\d+\." + re.escape(suffix), plugin.qname)
    assert site.on_listening == [plugin.start] and site.on_shutdown == [plugin.stop]


@pytest.mark.parametrize("text", ["loop now", "loop {\n  max 3\n}"])
def test_setup_takes_nothing(text: str) -> None:
    with pytest.raises(CorefileError, match="loop"):
        lp.setup(directive(text), SiteConfig(zones=["."], port=53, corefile="Corefile"))


def test_third_sighting_of_the_probe_is_a_loop() -> None:
    messages: list[str] = []
    plugin = Loop(".", ("127.0.0.1", 1053), messages.append)

    async def scenario() -> None:
        for name in ("other.example.", plugin.qname.upper()):  # the reader lower-cases: same name
            for _ in range(2):
                assert (await resolve(plugin.serve(hinfo(name), passed))).plugin == "next"
        assert plugin.seen == 2 and messages == []
        await resolve(plugin.serve(parse_query(dns.message.make_query(plugin.qname, "A").to_wire(), "udp",
                                       ("127.0.0.1", 1)), passed))
        assert plugin.seen == 2  # only HINFO counts
        await resolve(plugin.serve(hinfo(plugin.qname, ("::ffff:127.0.0.1", 41000)), passed))

    asyncio.run(scenario())
    assert messages == [
        f'[FATAL] plugin/loop: Loop (127.0.0.1:41000 -> 127.0.0.1:1053) detected for zone ".", see '
        f'https://coredns.io/plugins/loop#troubleshooting. Query: "HINFO {plugin.qname}"'
    ]


def test_nothing_is_counted_once_switched_off() -> None:
    messages: list[str] = []
    plugin = Loop(".", ("127.0.0.1", 1053), messages.append)
    plugin.off = True

    async def scenario() -> None:
        for _ in range(5):
            await resolve(plugin.serve(hinfo(plugin.qname), passed))

    asyncio.run(scenario())
    assert plugin.seen == 0 and messages == []


class Responder(asyncio.DatagramProtocol):
    """A loopback UDP server recording the questions it gets; answers them when ``answer``."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.questions: list[tuple[str, str]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        q = dns.message.from_wire(data)
        self.questions.append((q.question[0].name.to_text(), dns.rdatatype.to_text(q.question[0].rdtype)))
        if self.answer and self.transport is not None:
            self.transport.sendto(dns.message.make_response(q).to_wire(), addr)


def probe(answer: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[Loop, Responder, float]:
    monkeypatch.setattr(lp, "PROBE_FOR", 0.5)
    monkeypatch.setattr(lp, "PROBE_TIMEOUT", 0.1)
    monkeypatch.setattr(lp, "RETRY_AFTER", 0.05)
    monkeypatch.setattr(lp, "GRACE", 0.1)

    async def scenario() -> tuple[Loop, Responder, float]:
        loop = asyncio.get_running_loop()
        transport, server = await loop.create_datagram_endpoint(lambda: Responder(answer),
                                                                local_addr=("127.0.0.1", 0))
        plugin = Loop("example.org.", ("127.0.0.1", transport.get_extra_info("sockname")[1]))
        start = loop.time()
        await plugin.start()
        while not plugin.off and loop.time() - start < 2:
            await asyncio.sleep(0.01)
        took = loop.time() - start
        await plugin.stop()
        transport.close()
        return plugin, server, took

    return asyncio.run(scenario())


def test_probe_stops_after_one_answer_and_a_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    plugin, server, took = probe(True, monkeypatch)
    assert server.questions == [(plugin.qname, "HINFO")]
    assert plugin.off and 0.1 <= took < 0.4


def test_probe_retries_while_unanswered_then_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    plugin, server, took = probe(False, monkeypatch)
    assert 3 <= len(server.questions) <= 4  # every 0.1 s timeout + 0.05 s pause, for 0.5 s
    assert set(server.questions) == {(plugin.qname, "HINFO")}
    assert plugin.off and 0.5 <= took < 0.8


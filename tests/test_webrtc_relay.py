"""Two real aiortc peers negotiate through the server's relay and exchange audio."""

from __future__ import annotations

from .conftest import Clients
from .helpers import exchange_audio


async def test_two_aiortc_peers_exchange_audio(clients: Clients) -> None:
    offerer, offerer_inbox = await clients.new("Offerer")
    answerer, answerer_inbox = await clients.new("Answerer")
    await exchange_audio(offerer, offerer_inbox, answerer, answerer_inbox)

import numpy as np

from bots.testing import FakeLobby, check_plugin
from reader import ReaderBot


def test_it_is_a_plugin_a_provider_can_offer() -> None:
    check_plugin(ReaderBot, "reader")


async def test_it_reads_peoples_messages_one_after_another() -> None:
    lobby = FakeLobby()
    await lobby.start(ReaderBot(lobby, ReaderBot.Config.parse({})))
    await lobby.add_peer("Ann")
    await lobby.add_peer("Alert", bot=True)
    await lobby.say("Ann", "Good morning everyone.")
    await lobby.say("Alert", "Ann said banana")  # a bot's: not read
    await lobby.say("Ann", "Hi.")
    await lobby.stop()
    assert len(lobby.played) == 2
    first, second = (len(samples) / 48_000 for samples in lobby.played)
    assert 0.8 < first < 4 and 0.2 < second < first
    assert all(np.sqrt(np.mean(samples ** 2)) > 0.01 for samples in lobby.played)
